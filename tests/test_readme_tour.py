"""The README's tour runs as written: every path a command reads was made by a command before it (or
ships in configs/), the diffusion line gets a plain (non-conditional) tokenizer, the Python example
opens a file the tour's simulate writes, and a direction's output is one ``physfm view`` lists.  The
whole tour at tiny sizes takes far longer than a test may (22 commands, 22 min on 2 cores shared
with other jobs), so it is checked piece by piece here and run end to end by hand: ``python -m
tests.readme_tour DIR``."""

from __future__ import annotations

import re

from tests.readme_tour import REPO, tour_commands

# Arguments that name something a command reads (as parsed by the CLI itself).
INPUTS = ("paths", "datasets", "shards", "data", "ckpt", "direction", "probe", "tokens")


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def outputs_of(argv: list[str]) -> list[str]:
    overrides = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    out = _option(argv, "--out") or overrides.get("out")
    return [out] if out else []


def config_tree(argv: list[str]) -> dict:
    """The command's YAML (includes resolved) with its key=value overrides, as plain data: what the
    typed config would hold, read without importing the training code."""
    from data_pipelines.config import merge, parse_overrides, read_yaml, resolve_includes

    path = REPO / _option(argv, "--config")
    tree = resolve_includes(read_yaml(path), path.parent)
    return merge(tree, parse_overrides([a for a in argv if "=" in a and not a.startswith("-")]))


def inputs_of(argv: list[str]) -> list[str]:
    """Paths a tour command reads: its input arguments, and for training verbs the config's
    data/tokenizer keys."""
    from physfm.cli.main import build_parser

    args = build_parser().parse_args(argv)
    found: list[str] = []
    for name in INPUTS:
        value = getattr(args, name, None)
        found += value if isinstance(value, list) else [value] if isinstance(value, str) else []
    if argv[0] == "pretrain" or argv[:2] == ["tokenizer", "train"]:
        tree = config_tree(argv)
        data = tree.get("data", {})
        for key in ("tokens", "shards"):
            value = data.get(key) or []
            found += value if isinstance(value, list) else [value]
        found.append(tree.get("tokenizer", ""))
    return [p for p in found if p]


def _made_by(path: str, made: list[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in made)


def test_every_path_the_tour_reads_is_made_earlier_in_the_tour():
    made: list[str] = []
    for argv in tour_commands():
        missing = [
            p for p in inputs_of(argv) if not _made_by(p, made) and not p.startswith("configs/")
        ]
        assert not missing, (
            f"`physfm {' '.join(argv)}` reads {missing}, which no earlier tour command writes"
        )
        made += outputs_of(argv)


def test_the_diffusion_line_uses_a_plain_tokenizer_the_tour_trains():
    commands = tour_commands()
    trained = {outputs_of(a)[0]: a for a in commands if a[:2] == ["tokenizer", "train"]}
    diffusion = [
        a for a in commands if a[0] == "pretrain" and "diffusion" in (_option(a, "--config") or "")
    ]
    assert len(diffusion) == 1, "the tour has one diffusion line"
    tokenizer = config_tree(diffusion[0])["tokenizer"]
    tok_argv = next(a for out, a in trained.items() if _made_by(tokenizer, [out]))
    assert not config_tree(tok_argv)["model"].get("conditional"), (
        "the diffusion model refuses conditional tokens"
    )


def test_the_python_example_opens_a_file_the_tours_simulate_writes():
    from data_pipelines.simulators import SIMULATORS, file_stem, parameter_grid
    from physfm.cli.simulate import parse_params

    text = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", text[text.index("### Python API") :], re.S).group(1)
    path = re.search(r'WellReader\("([^"]+)"\)', example).group(1)
    written = set()
    for argv in tour_commands():
        if argv[0] == "simulate" and "--list" not in argv:
            spec = SIMULATORS[argv[1]]
            sweep = [argv[i + 1] for i, a in enumerate(argv) if a == "--param-sweep"]
            params = [argv[i + 1] for i, a in enumerate(argv) if a == "--param"]
            for p in parameter_grid(spec, parse_params(params, sweep) or None):
                written.add(f"{_option(argv, '--out')}/data/train/{file_stem(spec.name, p)}.hdf5")
    assert path in written, (
        f"README's Python example reads {path}; the tour writes e.g. {sorted(written)[:2]}"
    )


def test_the_tours_direction_is_listed_by_the_viewer(tmp_path):
    from physfm.view.runs import find_directions

    argv = next(a for a in tour_commands() if a[:2] == ["steer", "direction"])
    # what `steer direction --out FILE` writes: FILE and FILE.json
    out = tmp_path / _option(argv, "--out")
    out.parent.mkdir(parents=True)
    out.write_bytes(b"safetensors")
    out.with_name(out.name + ".json").write_text('{"format": "physfm-direction"}')
    assert [p for p, _ in find_directions(tmp_path)] == [out.resolve()]
