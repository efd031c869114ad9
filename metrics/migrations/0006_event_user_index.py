import django.db.models.deletion
from django.db import migrations, models


class AddIndexWithoutBlockingWrites(migrations.AddIndex):
    """On PostgreSQL the index is built CONCURRENTLY: the events table is the one ingest writes to,
    and a plain CREATE INDEX would hold its writes for as long as the build takes."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            if schema_editor.connection.vendor == "postgresql":
                schema_editor.add_index(model, self.index, concurrently=True)
            else:
                schema_editor.add_index(model, self.index)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            if schema_editor.connection.vendor == "postgresql":
                schema_editor.remove_index(model, self.index, concurrently=True)
            else:
                schema_editor.remove_index(model, self.index)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("billing", "0003_budget_last_evaluation"),
        ("metrics", "0005_rollup_keys_without_constraints"),
        ("teams", "0001_initial"),
    ]

    # The new index first: if its build fails, nothing else has changed.
    operations = [
        AddIndexWithoutBlockingWrites(
            model_name="usageevent",
            index=models.Index(fields=["organization", "user_id", "timestamp"], name="event_org_user_time"),
        ),
        migrations.AlterField(
            model_name="usageevent",
            name="organization",
            field=models.ForeignKey(
                db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name="+", to="teams.organization"
            ),
        ),
    ]
