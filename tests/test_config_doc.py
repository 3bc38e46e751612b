"""docs/CONFIG.md is generated from the config's own declarations and must be current; `seamline config show`
names each value's source; shipped configs are found by name; the exit codes tell a wrong command line from a
bad input."""

from __future__ import annotations

import argparse

import pytest
from servers import ROOT

from pipeline.cli import build_parser, main
from pipeline.cli.config import effective_config, reference_markdown, shipped_configs
from pipeline.config_file import shipped_config
from pipeline.errors import ConfigError


def test_config_reference_is_current():
    doc = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert doc == reference_markdown(), "docs/CONFIG.md is stale: run `seamline config reference > docs/CONFIG.md`"


def test_show_names_the_source_of_every_value():
    args = build_parser().parse_args(["config", "show", "--config", "buildings", "--workers", "1"])
    rows = {k: (v, src) for k, v, src in effective_config(args)}
    assert rows["model"] == ("buildings", "file") and rows["workers"] == (1, "flag")
    assert rows["halo"][1].startswith("resolved") and rows["halo"][0] == 256
    assert rows["device"] == ("auto", "default")


def test_shipped_configs_by_name():
    assert {"buildings", "trees", "microscopy", "classical"} <= set(shipped_configs())
    assert shipped_config("buildings").resolve() == (ROOT / "configs" / "buildings.yaml").resolve()
    with pytest.raises(ConfigError, match=r"config file nope: not found; pass an existing YAML file or a shipped config by name \(buildings"):
        shipped_config("nope")


@pytest.mark.parametrize("argv, code", [(["segment", "a.tif"], 64), (["segment", "a.tif", "--out", "o", "--tile", "x"], 64),
                                        (["frobnicate"], 64)])
def test_a_wrong_command_line_exits_64(argv, code, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == code and "usage:" in capsys.readouterr().err


def test_a_bad_input_exits_2(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "out"), "--model", "classical"]) == 2
    assert capsys.readouterr().err.startswith("seamline: error: input ")


def test_one_option_set_for_segment_watch_and_the_flow():
    def flags(p: argparse.ArgumentParser) -> set[str]:
        return {o for a in p._actions for o in a.option_strings}

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    import flows.segment as fs
    from flows.segment import main as flow_main  # noqa: F401  (the flow's parser is built in main)

    captured = {}

    class Stop(Exception):
        pass

    def grab(self, argv=None, namespace=None):
        captured["p"] = self
        raise Stop

    orig = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(Stop):
            fs.main([])
    finally:
        argparse.ArgumentParser.parse_args = orig
    shared = {"--config", "--model", "--tile", "--halo", "--workers", "--scheduler", "--device", "--batch-size",
              "--inference", "--tta", "--no-tta", "--keep-intermediate", "--no-report", "--quiet"}
    for p in (sub["segment"], sub["watch"], captured["p"]):
        assert shared <= flags(p), shared - flags(p)
