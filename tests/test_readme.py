"""The README as a front page (issue 33, item 1): what it names is what the package has, its results are
RESULTS.md's, its links lead somewhere, and no page of the docs points outside the repository."""

import re
from pathlib import Path

from chyvae_ext.config import MODELS
from chyvae_ext.data import DATASETS
from chyvae_ext.metrics import METRICS, PROTOCOLS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))


def table_row(label: str) -> str:
    return next(line for line in README.splitlines() if line.startswith(f"| {label} |"))


def names_in(cell: str) -> list[str]:
    return re.findall(r"`([\w]+)`", cell)


def test_the_front_table_names_every_model_dataset_and_metric_and_nothing_else():
    assert names_in(table_row("models (`--model`)").split("|")[2]) == list(MODELS)
    assert sorted(names_in(table_row("datasets (`--dataset`)").split("|")[2])) == sorted(DATASETS)
    metrics = names_in(table_row("metrics (`--metrics`)").split("|")[2])
    assert [m for m in metrics if m not in PROTOCOLS] == list(METRICS)
    assert [m for m in metrics if m in PROTOCOLS] == list(PROTOCOLS)


def test_the_results_table_is_the_one_in_results_md():
    results = (ROOT / "experiments" / "RESULTS.md").read_text()
    for setting in ("beta = 4", "nu = 12", "nu = 200"):
        ours = [c.strip() for c in next(x for x in README.splitlines() if f"| {setting} |" in x).split("|")[3:7]]
        theirs = [c.strip().strip("*") for c in next(x for x in results.splitlines()
                                                     if f"| {setting} | 2 |" in x).split("|")[4:8]]
        assert ours == theirs, setting
    assert "| untrained | step 0 | 6 encoders | 0.495 +- 0.035 | 0.010 +- 0.005 |" in results
    assert "| untrained (the floor) | step 0, 6 encoders | 0.495 +- 0.035 | 0.010 +- 0.005 |" in README


def test_every_link_of_the_readme_and_the_docs_leads_to_a_file():
    for page in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if target.startswith("http"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}"
    linked = set(re.findall(r"\]\(docs/([\w]+\.md)\)", README))
    assert linked == {p.name for p in DOCS}, "every docs page is reached from the README"


def test_no_text_refers_to_files_outside_the_repository():
    for page in [ROOT / "README.md", *DOCS, ROOT / "CHANGELOG.md"]:
        text = page.read_text()
        assert "../shared" not in text and "SPEC.md" not in text, page.name
        assert not re.search(r"\bSPEC \d", text), page.name
