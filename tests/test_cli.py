"""The ``nnunet-mim`` command line: each subcommand's parser is filled in only when it runs."""
import subprocess
import sys

import pytest

from nnunet_mim.cli import COMMANDS, main

IMPORTS_AFTER_ENV = """
import sys
from nnunet_mim.cli import main
main(["env"])
print(" ".join(m for m in ("torch", "timm", "nnunetv2") if m in sys.modules))
"""


def test_env_imports_neither_torch_nor_nnunet():
    """`eval "$(nnunet-mim env)"` sits in shell start-up files: it took 10 s when every subcommand's
    parser (and so torch, timm and nnU-Net) was built for it."""
    out = subprocess.run([sys.executable, "-c", IMPORTS_AFTER_ENV], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("export nnUNet_extTrainer=")
    assert lines[1:] == [], f"imported for `env`: {lines[1:]}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_shows_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: nnunet-mim {command}")
    assert "options:" in help_text and len(help_text.splitlines()) > 4  # its arguments, not a bare stub


def test_a_command_missing_an_argument_is_told_which(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["compare", "-o", "out"])  # the runs to compare are missing
    assert stop.value.code == 2
    assert "LABEL=RESULTS" in capsys.readouterr().err


def test_name_value_arguments_are_parsed_or_refused_by_the_parser(capsys):
    """NAME=VALUE arguments (compare's runs, --pretrained-weights, --source-weight, the linear probe's
    --encoders) share one argparse type: split at the first '=', a malformed one refused before anything runs."""
    from nnunet_mim.cli import build_parser
    benchmark, create = ["benchmark", "991"], ["pretrain-dataset", "create", "-d", "990", "-n", "X", "-i", "."]
    parsed = build_parser().parse_args(benchmark + ["--pretrained-weights", "MAE=a.pth", "MiM=b=c.pth"])
    assert parsed.pretrained_weights == [("MAE", "a.pth"), ("MiM", "b=c.pth")]
    assert build_parser().parse_args(create + ["--source-weight", "a=2.5"]).source_weight == [("a", 2.5)]
    for arguments, told in ((benchmark + ["--pretrained-weights", "MAE"],
                             "--pretrained-weights: expected NAME=VALUE, got 'MAE'"),
                            (create + ["--source-weight", "a=heavy"],
                             "--source-weight: expected NAME=NUMBER, got 'a=heavy'")):
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args(arguments)
        assert stop.value.code == 2 and told in capsys.readouterr().err


@pytest.mark.parametrize("option, values, told", [("--folds", ["0", "1", "0"], "0"),
                                                  ("--fractions", ["0.1", "0.1"], "0.1"),
                                                  ("--arms", ["MAE", "scratch", "MAE"], "MAE"),
                                                  ("--init-seed", ["1", "8", "1", "8"], "1 8")])
def test_a_benchmark_value_given_twice_is_refused_by_the_parser(option, values, told, capsys):
    """Duplicates would count one run twice in the paired test (found by feeding the CLI bad input)."""
    from nnunet_mim.cli import build_parser
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["benchmark", "991", option, *values])
    assert stop.value.code == 2
    assert f"argument {option}: {told} given more than once" in capsys.readouterr().err
    distinct = build_parser().parse_args(["benchmark", "991", option, *dict.fromkeys(values)])
    assert len(getattr(distinct, option[2:].replace("-", "_"))) == len(dict.fromkeys(values))
