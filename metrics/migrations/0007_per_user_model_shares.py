from django.db import migrations, models

HELP = "Per-user rows: {model: [requests, total tokens, cost in 1e-10 USD]}."


def shares_of_older_rows(apps, schema_editor):
    """Per-user rows written before this change were kept per team, model and user: their model's
    share is the whole row."""
    build = {
        "postgresql": "jsonb_build_object(model, jsonb_build_array(requests, total_tokens, cost))",
        "sqlite": "json_object(model, json_array(requests, total_tokens, cost))",
    }[schema_editor.connection.vendor]
    schema_editor.execute(
        f"UPDATE metrics_dailyrollup SET by_model = {build} WHERE NOT is_team_total AND model <> ''"  # noqa: S608
    )


class Migration(migrations.Migration):
    dependencies = [
        ("metrics", "0006_event_user_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="dailyrollup",
            name="by_model",
            field=models.JSONField(blank=True, default=dict, help_text=HELP),
        ),
        migrations.AddField(
            model_name="hourlyrollup",
            name="by_model",
            field=models.JSONField(blank=True, default=dict, help_text=HELP),
        ),
        migrations.RunPython(shares_of_older_rows, migrations.RunPython.noop),
    ]
