"""The configuration reference in docs/ is generated from the schema: keep them in sync."""

from pathlib import Path

from hvdbg.config import SCHEMA, schema_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_config_doc_lists_every_key():
    text = DOC.read_text()
    assert schema_markdown() in text, "regenerate docs/config.md from hvdbg.config.schema_markdown()"
    for opt in SCHEMA:
        assert f"`{opt.key}`" in text


def test_design_doc_module_table_is_current():
    from hvdbg.ui.layout_doc import module_table
    text = (DOC.parent / "design.md").read_text()
    assert module_table() in text, "regenerate the layout table of docs/design.md: python -m hvdbg.ui.layout_doc"
