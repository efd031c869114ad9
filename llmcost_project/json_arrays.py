"""JSON arrays in SQL: the one place where PostgreSQL and SQLite spell "the elements of a JSON array".

PostgreSQL unnests a jsonb array with `jsonb_array_elements_text`, SQLite with the table-valued
`json_each`. Everything that reads array elements in SQL (grouping events by tag, filtering by a tag)
is written on top of `array_elements`, which yields rows `(value, key)` on both.
"""

from __future__ import annotations

from django.db.models import BooleanField, Func


def array_elements(column_sql: str, alias: str, connection) -> str:
    """A FROM-clause item: one row per element of the JSON array in `column_sql`, with columns
    `value` (the element as text) and `key` (its position, ascending). Usable after `JOIN` / `LEFT
    JOIN ... ON` and in a subquery, and may refer to columns of the tables before it."""
    if connection.vendor == "postgresql":
        return f"LATERAL jsonb_array_elements_text({column_sql}) WITH ORDINALITY AS {alias}(value, key)"
    return f"json_each({column_sql}) AS {alias}"  # SQLite: columns key, value, type, ...


def first_occurrence(column_sql: str, alias: str, connection) -> str:
    """A join condition keeping each distinct element of `alias` (an `array_elements(column_sql,
    alias)`) once: an array that repeats a value counts once in that value's group."""
    earlier = f"{alias}_earlier"
    return (
        f"NOT EXISTS (SELECT 1 FROM {array_elements(column_sql, earlier, connection)} "  # noqa: S608 -- no input
        f"WHERE {earlier}.value = {alias}.value AND {earlier}.key < {alias}.key)"
    )


class ArrayContains(Func):
    """True when the JSON array in the first expression holds the text in the second."""

    output_field = BooleanField()
    arity = 2

    def as_sql(self, compiler, connection, function=None, template=None, arg_joiner=None, **extra_context):
        array_sql, array_params = compiler.compile(self.source_expressions[0])
        value_sql, value_params = compiler.compile(self.source_expressions[1])
        elements = array_elements(array_sql, "contained", connection)
        return (
            f"EXISTS (SELECT 1 FROM {elements} WHERE contained.value = {value_sql})",  # noqa: S608 -- no input
            (*array_params, *value_params),
        )
