"""The command line: every shim passes its exit code on, one `megadna` command dispatches, flags come
from the config dataclasses (typed, round-trip, no abbreviations)."""

import ast
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from megadna.cli import args as cli_args
from megadna.cli.main import SUBCOMMANDS
from megadna.cli.main import main as megadna_main

REPO = Path(__file__).resolve().parents[1]
SHIMS = sorted((REPO / "tools").glob("*.py")) + sorted((REPO / "launchers").glob("*.py"))


def _shim_target(path: Path) -> str | None:
    """The megadna.cli module a shim imports `main` from (None when main is defined in the file)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("megadna.cli.") and any(a.name == "main" for a in node.names):
            return node.module
    return None


@pytest.mark.parametrize("shim", SHIMS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shim_ends_in_raise_systemexit_main(shim):
    last = ast.parse(shim.read_text()).body[-1]
    assert isinstance(last, ast.If), f"{shim}: must end with `if __name__ == '__main__': raise SystemExit(main())`"
    (stmt,) = last.body
    assert ast.unparse(stmt) == "raise SystemExit(main())", f"{shim}: ends with {ast.unparse(stmt)!r}"


@pytest.mark.parametrize("shim", [s for s in SHIMS if _shim_target(s)], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shim_propagates_a_nonzero_exit_code(shim, monkeypatch):
    """Run the shim as __main__ with its library main() returning 3: the process must exit 3."""
    module = __import__(_shim_target(shim), fromlist=["main"])
    monkeypatch.setattr(module, "main", lambda argv=None: 3)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(shim), run_name="__main__")
    assert exc.value.code == 3


def _damaged_shards(tmp_path: Path) -> Path:
    from megadna.data.genome import WindowConfig
    from megadna.data.shard_writer import ShardConfig, write_shards
    from megadna.data.synthetic import write_synthetic_fasta

    fasta = write_synthetic_fasta(tmp_path / "g.fa.gz", n_contigs=2, length=20_000, seed=1)
    out = tmp_path / "shards"
    write_shards([fasta], out, WindowConfig(window=200, stride=200, val_fraction=0.1), ShardConfig(samples_per_shard=40))
    victim = sorted((out / "train").glob("*.tar*"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return out


def test_make_shards_verify_of_a_damaged_set_exits_nonzero_through_tool_and_megadna(tmp_path):
    out = _damaged_shards(tmp_path)
    tool = subprocess.run([sys.executable, str(REPO / "tools" / "make_shards.py"), "--out", str(out), "--verify"], capture_output=True, text=True)
    assert tool.returncode == 1, tool.stdout + tool.stderr
    assert "train" in tool.stdout
    via_megadna = subprocess.run([sys.executable, "-m", "megadna.cli.main", "make-shards", "--out", str(out), "--verify"], capture_output=True, text=True)
    assert via_megadna.returncode == 1, via_megadna.stdout + via_megadna.stderr


def test_megadna_dispatches_and_refuses_unknown_subcommands(capsys):
    assert megadna_main([]) == 0
    assert "make-shards" in capsys.readouterr().out
    assert megadna_main(["frobnicate"]) == 2
    assert "unknown subcommand 'frobnicate'" in capsys.readouterr().err
    for name, (module, _) in SUBCOMMANDS.items():
        assert callable(__import__(f"megadna.cli.{module}", fromlist=["main"]).main), name


@pytest.mark.parametrize("module", sorted({m for m, _ in SUBCOMMANDS.values()}))
def test_every_subcommand_has_help_and_refuses_abbreviated_flags(module, capsys):
    cli = __import__(f"megadna.cli.{module}", fromlist=["main", "build_parser"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    p = cli.build_parser()
    assert p.allow_abbrev is False, f"megadna.cli.{module}: abbreviated flags would be guessed"
    # A prefix of a real flag is unknown, never matched to the flag.
    longest = max((o for a in p._actions for o in a.option_strings if o.startswith("--")), key=len)
    assert p._parse_optional(longest[:-1]) is None or p._parse_optional(longest[:-1])[0] is None


def test_gue_mode_is_not_read_as_model(capsys):
    from megadna.cli.finetune_gue import main

    with pytest.raises(SystemExit) as exc:
        main(["--gue_dir", "x", "--mod", "probe"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --mod" in capsys.readouterr().err


def test_config_flags_round_trip_through_to_argv():
    from megadna.eval.gue import GUEConfig
    from megadna.train.config import TrainConfig

    for cls, changed in ((TrainConfig, dict(max_steps=7, masking="bert", progress=False, mask_ratio=0.2)), (GUEConfig, dict(gue_dir="g", model="tiny", init="random", tokenizer="kmer6", lr=1e-4, progress=False))):
        cfg = cls(**changed)
        p = cli_args.parser()
        cli_args.add_config_arguments(p, cls)
        assert cli_args.config_from_args(cls, p.parse_args(cli_args.to_argv(cfg))) == cfg
        assert set(cli_args.to_argv(cfg)[::2]) == {f"--{k}" for k in changed}


def test_bool_flags_are_strict():
    assert cli_args.parse_bool("TRUE") is True and cli_args.parse_bool("off") is False
    with pytest.raises(Exception, match="expected true or false"):
        cli_args.parse_bool("maybe")
