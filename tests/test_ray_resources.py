"""An actor pool the Ray cluster cannot hold is refused at once, with the numbers (issue 21, item 3).

It once waited forever: the README's ``--concurrency 8 --threads-per-actor 4`` asked 32 CPUs of a 2-CPU machine.
Uses the session's local 2-CPU Ray instance (``local_ray``); no actor is started.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from verbalize.cli.main import main  # noqa: E402
from verbalize.io.ray import check_resources, classify_dataset  # noqa: E402

TEMPLATE = 'name = "t"\nprompt = "Review: {text}\\nSentiment:"\n[labels]\nnegative = ["bad"]\npositive = ["good"]\n'


@pytest.mark.parametrize(
    ("options", "need", "fit"),
    [
        (["--concurrency", "8", "--threads-per-actor", "4"], "32 CPUs", "0 actors"),
        (["--concurrency", "3"], "3 CPUs", "2 actors or fewer"),
        (["--concurrency", "2", "--threads-per-actor", "2", "--cpus-per-actor", "1.5"], "3 CPUs", "1 actor or fewer"),
    ],
)
def test_predict_refuses_more_cpus_than_the_ray_cluster_has(
    tmp_path, tmp_template, local_ray, capsys, options, need, fit
):
    src = tmp_path / "in.txt"
    src.write_text("good film\nbad film\n")
    out = tmp_path / "out.parquet"
    args = ["predict", str(tmp_template(TEMPLATE)), str(src), "-o", str(out), "--engine", "ray", *options]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"need {need}" in err and "the Ray cluster has 2" in err and "wait for them forever" in err, err
    if fit != "0 actors":
        assert f"Use {fit}" in err, err
    else:
        assert "fewer CPUs per actor (actors x CPUs each <= 2)" in err, err
    assert not out.exists()


def test_classify_dataset_refuses_the_pool_before_ray_waits(local_ray):
    ds = ray.data.from_items([{"text": "good film"}])
    with pytest.raises(ValueError, match=r"3 actors x 1 CPU each .* need 3 CPUs, and the Ray cluster has 2"):
        classify_dataset(ds, template="sst2", concurrency=(3, 4), threads=1)


def test_gpus_are_checked_as_cpus_are():
    with pytest.raises(ValueError, match=r"need 2 GPUs, and a 1-GPU node has 1: .*Use 1 actor or fewer"):
        check_resources(2, 1, 1, {"CPU": 16.0, "GPU": 1.0}, "a 1-GPU node")
    with pytest.raises(ValueError, match="need 1 GPUs, and a CPU node has 0"):
        check_resources(1, 1, 1, {"CPU": 16.0}, "a CPU node")
    check_resources((2, 8), 0.5, 0.5, {"CPU": 1.0, "GPU": 1.0}, "exactly enough")  # the minimum pool fits
