"""The benchmark page's sections: each script replaces its own section and keeps every other one, also when a
section's end marker went missing (a hand edit or an older script)."""

from pathlib import Path

from bench.report import kept_sections, replace_section

PAGE = """# Benchmarks

<!-- section:a -->
## A
old a
<!-- section:b -->
## B
b stays
<!-- /section -->
"""


def test_replacing_a_section_without_its_end_marker_keeps_the_next_section(tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    md.write_text(PAGE)
    replace_section(md, "a", "## A\nnew a")
    text = md.read_text()
    assert "new a" in text and "old a" not in text
    assert "<!-- section:b -->\n## B\nb stays\n<!-- /section -->" in text


def test_kept_sections_keeps_each_section_once_and_closes_the_unclosed(tmp_path: Path) -> None:
    kept = kept_sections(PAGE)
    assert kept.count("<!-- section:a -->") == 1 and kept.count("<!-- section:b -->") == 1
    assert kept.count("<!-- /section -->") == 2
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n" + kept)
    replace_section(md, "a", "## A\nnew a")
    assert "b stays" in md.read_text()
