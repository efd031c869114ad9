"""The apps depend one way: teams ← billing's pricing part ← metrics ← billing's budgets part.

Every import statement of the project's apps is read (module level and inside functions,
relative ones resolved), so a lower layer reaching up fails here rather than as a circular import
at some later start-up. Migrations are history and exempt.
"""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from billing.prometheus import BUDGETS_SECTION
from billing.selectors import budget_check
from billing.services import budget_create
from metrics import ingest_hooks, prometheus
from metrics.prometheus import BusinessCollector
from tests.conftest import api, event

ROOT = Path(__file__).resolve().parent.parent
APPS = ("teams", "billing", "metrics")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for app in APPS
        for path in sorted((ROOT / app).rglob("*.py"))
        if "migrations" not in path.relative_to(ROOT).parts
    }


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(module: str, path: Path) -> set[str]:
    """Every project module `path` imports: `from a.b import c` is a.b.c when c is a module, else a.b."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.add(candidate if is_module(candidate) else source)
    return {name for name in found if name.split(".")[0] in APPS}


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def is_pricing(name: str) -> bool:
    return within(name, "billing.pricing", "billing.models.prices")


def refusal(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when the layering allows it."""
    if within(importer, "teams") and within(imported, "billing", "metrics"):
        return "teams is the bottom layer: it imports neither billing nor metrics"
    if is_pricing(importer) and (
        within(imported, "metrics") or (within(imported, "billing") and not is_pricing(imported))
    ):
        return "billing's pricing part imports only itself and teams (not metrics, not budgets)"
    if within(importer, "metrics") and within(imported, "billing") and not is_pricing(imported):
        return "metrics imports only billing's pricing part (billing.pricing*, billing.models.prices)"
    return None


def test_the_apps_depend_one_way():
    modules = project_modules()
    assert {"teams.views", "billing.pricing.book", "metrics.api", "billing.views"} <= set(modules)
    wrong = sorted(
        f"{importer} imports {imported}: {reason}"
        for importer, path in modules.items()
        for imported in imported_modules(importer, path)
        if (reason := refusal(importer, imported))
    )
    assert wrong == []


@pytest.mark.parametrize(
    ("importer", "imported", "refused"),
    [
        ("teams.views", "billing.models", True),
        ("teams.views", "metrics.selectors", True),
        ("teams.views", "teams.access", False),
        ("billing.pricing.book", "billing.models.prices", False),
        ("billing.pricing.book", "billing.models", True),  # the package: it loads the budget models
        ("billing.pricing.book", "billing.selectors", True),
        ("billing.models.prices", "metrics.models", True),
        ("billing.models.prices", "billing.pricing.money", False),
        ("metrics.models", "billing.pricing.money", False),
        ("metrics.services", "billing.pricing", False),
        ("metrics.api", "billing.selectors", True),
        ("metrics.prometheus", "billing.models", True),
        ("metrics.templatetags.metrics_format", "billing.templatetags.humanize_money", True),
        ("billing.views", "metrics.selectors", False),
        ("billing.prometheus", "metrics.prometheus", False),
    ],
)
def test_the_rules_refuse_what_they_should(importer, imported, refused):
    assert (refusal(importer, imported) is not None) is refused


def test_it_reads_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "book.py"
    source.write_text(
        "from . import money\n\ndef f():\n    from ..selectors import budget_check\n    import metrics.api\n"
    )
    found = imported_modules("billing.pricing.book", source)
    assert found == {"billing.pricing.money", "billing.selectors", "metrics.api"}


# --- the hooks budgets register into metrics ---------------------------------------------------------


@pytest.fixture
def without_budgets(monkeypatch):
    """metrics as it answers with billing's budgets part not registered."""
    monkeypatch.setattr(ingest_hooks, "_budget_answer", None)
    monkeypatch.setattr(prometheus, "BUSINESS_SECTIONS", {})


def test_billing_registers_its_budget_answer_and_gauges():
    assert ingest_hooks._budget_answer is budget_check
    assert prometheus.BUSINESS_SECTIONS["budgets"] is BUDGETS_SECTION


def test_ingest_answers_budgets_as_null_when_no_budgets_part_is_registered(world, without_budgets):
    tracked = api(world.ingest).post("/api/v1/metrics/track", event(), format="json")
    batch = api(world.ingest).post("/api/v1/events", {"events": [event(), event(team_alias="search")]}, format="json")

    assert tracked.status_code == 200
    assert tracked.json()["budget"] is None
    assert batch.status_code == 200
    assert batch.json()["budgets"] == {"chatbot": None, "search": None}


def test_metrics_serves_no_budget_gauges_when_no_budgets_part_is_registered(world, without_budgets):
    budget_create(organization=world.acme, team=world.chatbot, amount_usd=Decimal(5), period="daily")
    text = generate_latest(BusinessCollector()).decode()

    assert "llmcost_business_metrics_up 1.0" in text
    assert "llmcost_budget_" not in text
