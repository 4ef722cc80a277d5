"""Sampling options: one typed record per model kind (physfm.inference.sampling); a bad value or a
name no kind takes is one clear error naming the option, from the library and from the CLI."""

from __future__ import annotations

import pytest

from data_pipelines.errors import InputError
from physfm.inference.sampling import ARSampling, DiffusionSampling, Sampling


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ARSampling(temperature=-0.5), "temperature: must be >= 0, got -0.5"),
        (lambda: ARSampling(top_k=0), "top_k: must be >= 1 or unset, got 0"),
        (lambda: DiffusionSampling(sampling_steps=0), "sampling_steps: must be >= 1, got 0"),
        (
            lambda: DiffusionSampling(sampler="rk4"),
            "sampler: expected one of euler, heun, got 'rk4'",
        ),
    ],
)
def test_a_bad_value_names_its_option(build, message):
    with pytest.raises(InputError, match=message):
        build()


def test_options_by_name_go_to_their_kind_and_an_unknown_name_is_refused():
    sampling = Sampling.from_options(temperature=0.7, top_k=5, sampling_steps=3, sampler="heun")
    assert sampling.ar == ARSampling(temperature=0.7, top_k=5)
    assert sampling.diffusion == DiffusionSampling(sampling_steps=3, sampler="heun")
    assert sampling.options("rollout") == {"temperature": 0.7, "top_k": 5}
    assert sampling.options("load") == {
        "refiner": "auto",
        "dtype": None,
        "sampling_steps": 3,
        "sampler": "heun",
        "snap_to_codes": None,
    }
    with pytest.raises(TypeError, match="sampling_step: no model kind takes them"):
        Sampling.from_options(sampling_step=2)


def test_the_cli_refuses_a_bad_option_in_one_line_before_loading_anything(tmp_path, capsys):
    from physfm.cli import main

    args = [
        "--ckpt",
        str(tmp_path / "none"),
        "--data",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(["evaluate", *args, "--temperature", "-1"]) == 2
    err = capsys.readouterr().err
    assert "temperature: must be >= 0, got -1.0" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
