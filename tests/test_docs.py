"""The README and the pages under docs/ link to each other without a dead link or anchor, and every place the code,
the admin's templates and the deployment files send a reader to (`docs/operations.md, "Backups"`) is there."""

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
# A reference from the code: docs/operations.md, "Scaling web and workers" (or README.md, "...")
REFERENCE = re.compile(r"\b(README\.md|docs/[\w-]+\.md)(?:#([\w-]+)|,? \\?\"([^\"\\]+)\\?\")?")
SOURCES = ("connections", "providers", "controlroom", "client", "bench", ".ci")
SOURCE_FILES = ("Dockerfile", "docker-compose.yml", "Makefile", "Procfile", ".env.example")


def anchor_of(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped but hyphens and underscores, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        anchor = anchor_of(heading)
        found.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
        seen[anchor] = seen.get(anchor, 0) + 1
    return frozenset(found)


@cache
def headings(path: Path) -> frozenset[str]:
    text = FENCE.sub("", path.read_text())
    return frozenset(heading.strip() for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE))


def dead_links(page: Path) -> list[str]:
    dead = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s) and mailto: not followed here
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            dead.append(f"{target}: no file {linked.name}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            dead.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return dead


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_link_between_the_readme_and_the_docs_leads_somewhere(page):
    assert dead_links(page) == []


def test_the_link_check_sees_a_dead_anchor_and_a_missing_page(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Keep `.env`\n\n[ok](#keep-env) [gone](#nowhere) [missing](other.md)\n")
    assert [line.split(":")[0] for line in dead_links(page)] == ["#nowhere", "other.md"]


def test_anchors_are_githubs():
    assert anchor_of("Bots: getting a token") == "bots-getting-a-token"
    assert anchor_of("Keep `.env`") == "keep-env"
    assert anchor_of("A bot's first token") == "a-bots-first-token"


def referring_files() -> list[Path]:
    files = [path for folder in SOURCES for path in (ROOT / folder).rglob("*") if path.is_file()]
    files += [ROOT / name for name in SOURCE_FILES] + [ROOT / "tests" / "deploy" / "test_deploy_files.py"]
    return [
        path for path in files if path.suffix not in {".png", ".pyc", ".sqlite3"} and "migrations" not in path.parts
    ]


def test_what_the_code_points_readers_to_exists():
    missing = []
    for path in referring_files():
        for page_name, anchor, heading in REFERENCE.findall(path.read_text(errors="replace")):
            page = ROOT / page_name
            where = f"{path.relative_to(ROOT)} names {page_name}"
            if not page.exists():
                missing.append(f"{where}, which does not exist")
            elif anchor and anchor not in anchors(page):
                missing.append(f"{where}#{anchor}, which has no such heading")
            elif heading and heading not in headings(page):
                missing.append(f'{where}, "{heading}", which has no such heading')
    assert missing == []


def test_the_readme_stays_short_and_keeps_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()
    for section in ("Run it", "Test it", "Try it without a real provider", "A bot's first token", "Where to go next"):
        assert section in headings(ROOT / "README.md"), section


def test_the_salesforce_examples_name_hosts_salesforce_has():
    # <yourinstance> is login, test or a My Domain (acme.my): acme.salesforce.com is no Salesforce host
    for page in PAGES:
        text = page.read_text()
        assert "acme.salesforce.com" not in text and "yourinstance: acme}" not in text, page.name
    assert "`acme.my`" in (ROOT / "README.md").read_text()
