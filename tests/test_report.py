"""Bad input around accounting (prices, stage names, report paths), live progress, and Ray metrics."""

from __future__ import annotations

import io

import pytest
import yaml

from jobs.cli import main as cli_main
from jobs.spec import parse_spec
from pipelines.accounting import RunAccounting, StageLoad
from pipelines.errors import ConfigError, OutputError
from pipelines.metrics import RayMetrics, make_metrics
from pipelines.progress import LiveProgress
from pipelines.report import open_job_output
from tests.support.jobspecs import spec_dict


def error_of(spec: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(yaml.safe_dump(spec, sort_keys=False), source="job.yaml")
    return str(info.value)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["gpu_hour", "cpu_hour"])
@pytest.mark.parametrize("value", [-0.01, float("nan"), float("inf")])
def test_negative_or_non_finite_prices_are_refused(tmp_path, field, value):
    message = error_of(spec_dict(tmp_path / "o", cost={field: value}))
    assert message.startswith("job.yaml:") and f"cost.{field}" in message and "price >= 0" in message


def test_prices_are_optional_and_default_to_unpriced(tmp_path):
    spec = parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o")), source="job.yaml")
    assert spec.cost is None
    priced = parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o", cost={"gpu_hour": 2.5})), source="job.yaml")
    assert (priced.cost.gpu_hour, priced.cost.cpu_hour, priced.cost.currency) == (2.5, 0.0, "USD")
    # Prices change what a run costs, not what it generates: same job identity, so a rerun resumes.
    assert spec.identity() == priced.identity()


def test_unknown_cost_field_is_named(tmp_path):
    message = error_of(spec_dict(tmp_path / "o", cost={"gpu_hours": 2.5}))
    assert "cost.gpu_hours" in message and "unknown field" in message and "gpu_hour" in message


@pytest.mark.parametrize("stage", ["encoder", "denoize", "vae"])
def test_unknown_stage_names_are_refused(tmp_path, stage):
    message = error_of(spec_dict(tmp_path / "o", **{f"stages__{stage}": {"batch_size": 2}}))
    assert f"stages.{stage}: unknown field" in message
    assert "denoise" in message and "decode" in message and "write" in message  # it says which exist


def test_report_for_a_path_that_is_not_a_job_output(tmp_path, capsys):
    (tmp_path / "some-folder").mkdir()
    (tmp_path / "some-folder" / "file.txt").write_text("not a job")
    for path, why in ((tmp_path / "nothing-here", "does not exist"), (tmp_path / "some-folder", "no latentmill.json")):
        with pytest.raises(OutputError, match=why):
            open_job_output(str(path))
        assert cli_main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert "is not a latentmill job output" in err and why in err and "Traceback" not in err


# -- live progress --------------------------------------------------------------------------------


def _accounting() -> RunAccounting:
    acc = RunAccounting(run_id="r", planned=100, already_committed=20, to_generate=80, job="j")
    acc.pools_starting()
    load = StageLoad(actors=1, reserved=1, queued=3, free_slots=0, idle_actors=0, cpus_per_actor=1, gpus_per_actor=0)
    acc.observe({"denoise": load, "decode": load})
    acc.submitted("denoise", 8)
    acc.record("denoise", items=8, busy_s=0.01, started_at=0.0)
    acc.observe({"denoise": load, "decode": load})
    acc.committed(8)
    return acc


def test_progress_redraws_in_place_on_a_tty():
    stream = io.StringIO()
    live = LiveProgress("j", stream=stream, tty=True, every_s=0)
    acc = _accounting()
    live.update(acc)
    live.update(acc)
    text = stream.getvalue()
    first, second = text.split("\x1b[3F")  # the second draw moves up over the 3 lines of the first
    assert first.count("\n") == 3 and second.count("\n") == 3
    assert "28/100 committed" in first and "denoise" in first and "decode" in first
    assert all(line.startswith("\x1b[2K") for line in first.splitlines())


def test_progress_prints_plain_lines_at_intervals_when_not_a_tty():
    stream = io.StringIO()
    live = LiveProgress("j", stream=stream, tty=False, every_s=3600)
    acc = _accounting()
    for _ in range(50):
        live.update(acc)  # not due yet: nothing
    assert stream.getvalue() == ""
    live.finish(acc, {})
    text = stream.getvalue()
    assert "\x1b" not in text and "j (running): 28/100 committed" in text and "  denoise" in text


# -- Ray metrics ----------------------------------------------------------------------------------


class _Recorder:
    calls: list = []

    def __init__(self, name, description="", boundaries=None, tag_keys=None):
        self.name, self.tag_keys = name, tag_keys

    def _record(self, kind, value, tags):
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        _Recorder.calls.append((self.name, kind, value, dict(tags)))

    def inc(self, value=1.0, tags=None):
        self._record("inc", value, tags)

    def set(self, value, tags=None):
        self._record("set", value, tags)

    def observe(self, value, tags=None):
        self._record("observe", value, tags)


def test_metrics_export_counts_as_deltas_with_stage_tags():
    _Recorder.calls = []
    factory = {"Counter": _Recorder, "Gauge": _Recorder, "Histogram": _Recorder}
    metrics = RayMetrics("j", every_s=0, factory=factory)
    acc = _accounting()
    metrics.push(acc)
    acc.record("denoise", items=8, busy_s=0.02, started_at=0.0)
    metrics.push(acc)
    items = [c for c in _Recorder.calls if c[0] == "latentmill_stage_items"]
    assert items == [
        ("latentmill_stage_items", "inc", 8, {"job": "j", "stage": "denoise"}),
        ("latentmill_stage_items", "inc", 8, {"job": "j", "stage": "denoise"}),
    ]
    busy = sum(c[2] for c in _Recorder.calls if c[0] == "latentmill_stage_busy_seconds")
    assert busy == pytest.approx(0.03)
    actors = {c[3]["stage"]: c[2] for c in _Recorder.calls if c[0] == "latentmill_stage_actors"}
    assert actors == {"denoise": 1, "decode": 1}
    committed = [c for c in _Recorder.calls if c[0] == "latentmill_samples_committed"]
    assert committed == [("latentmill_samples_committed", "inc", 8, {"job": "j"})]  # no second, empty increment


def test_metric_names_and_tags_are_accepted_by_ray(ray_cluster):
    metrics = make_metrics()
    tags = {"job": "j", "stage": "decode"}
    metrics["items"].inc(3, tags=tags)
    metrics["latency"].observe(0.2, tags=tags)
    metrics["actors"].set(2, tags=tags)
    metrics["eta"].set(10.0, tags={"job": "j"})
    with pytest.raises(ValueError):
        metrics["items"].inc(1, tags={"job": "j"})  # a stage metric without its stage tag is refused


def test_metrics_export_gives_the_quality_monitor_flags_at_the_end_of_a_run():
    _Recorder.calls = []
    factory = {"Counter": _Recorder, "Gauge": _Recorder, "Histogram": _Recorder}
    summary = {"flagged": [{"shard": "00001", "why": "mean PSNR 5.7 dB < min_psnr 40"}], "psnr": 5.7, "ssim": "inf"}
    metrics = RayMetrics("j", every_s=0, factory=factory, quality=lambda: summary)
    metrics.finish(_accounting(), {})
    quality = {c[0]: c[2] for c in _Recorder.calls if c[0].startswith("latentmill_quality")}
    # "inf" (identical images) is no finite figure to export; the others are.
    assert quality == {"latentmill_quality_flagged_shards": 1, "latentmill_quality_psnr_db": 5.7}
