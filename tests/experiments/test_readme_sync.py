"""experiments.readme_sync: README blocks copied from report sections, stale blocks detected."""

import pathlib

import pytest

from experiments import readme_sync

REPORT = """# Study

## Table
| a | b |
|---|---|
| 1 | 2 |

Prose after the table.

### Detail
- one
- two

## Other
| x |
"""


def test_section_runs_to_the_next_heading_of_its_level():
    assert readme_sync.section(REPORT, "Table").startswith("| a | b |")
    assert "- two" in readme_sync.section(REPORT, "Table")  # the ### subsection belongs to it
    assert "| x |" not in readme_sync.section(REPORT, "Table")
    with pytest.raises(KeyError):
        readme_sync.section(REPORT, "Nope")


def test_sync_replaces_blocks_and_reports_stale_and_missing(tmp_path):
    (tmp_path / "r.md").write_text(REPORT)
    readme = ("intro\n<!-- from: r.md § Table | table -->\nold\n<!-- /from -->\n"
              "<!-- from: r.md § Detail | bullets -->\n- one\n- two\n<!-- /from -->\n"
              "<!-- from: absent.md -->\nkept\n<!-- /from -->\nend\n")
    new, changed, missing = readme_sync.sync(readme, tmp_path, allow_missing=True)
    assert changed == ["r.md § Table | table"] and missing == ["absent.md"]
    assert "<!-- from: r.md § Table | table -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- /from -->" in new
    assert "kept" in new and new.endswith("end\n")
    again, changed, _ = readme_sync.sync(new, tmp_path, allow_missing=True)
    assert again == new and changed == []
    with pytest.raises(FileNotFoundError):
        readme_sync.sync(readme, tmp_path)


def test_bad_heading_or_filter_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "r.md").write_text(REPORT)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- from: r.md § Missing -->\n<!-- /from -->\n")
    assert readme_sync.main([f"--readme={readme}"]) == 2
    assert "no heading 'Missing'" in capsys.readouterr().err
    readme.write_text("<!-- from: r.md § Table | pie -->\n<!-- /from -->\n")
    assert readme_sync.main([f"--readme={readme}"]) == 2
    assert "unknown filter 'pie'" in capsys.readouterr().err


def test_check_mode_exits_1_on_a_stale_block(tmp_path):
    (tmp_path / "r.md").write_text(REPORT)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- from: r.md § Other | table -->\n| y |\n<!-- /from -->\n")
    assert readme_sync.main([f"--readme={readme}", "--check"]) == 1
    assert readme_sync.main([f"--readme={readme}"]) == 0
    assert readme_sync.main([f"--readme={readme}", "--check"]) == 0
    assert "| x |" in readme.read_text()


def test_the_readme_blocks_name_reports_and_headings():
    # Every block of the project's README is well formed (its report may not exist here).
    text = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    specs = [m.group("spec") for m in readme_sync.BLOCK.finditer(text)]
    assert text.count("<!-- from: ") == len(specs) == text.count("<!-- /from -->")
    for spec in specs:
        path = spec.partition(" | ")[0].partition(" § ")[0]
        assert path.endswith(".md"), spec
