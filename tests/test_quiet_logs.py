"""What a user sees is medvision's own output: no library advertisement ("💡 Tip: ... litlogger") and no device
banner ("GPU available: False, used: False"), which reached the demo's log seven times.

They reached it because `medvision demo` (like a notebook) imports the stack before anything configures logging,
so Lightning installs its own stderr handler; `medvision run` imports later and happened to hide them. The test
runs a pipeline in that import order, in a fresh interpreter.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys

import pytest
from tiny_pipeline import TINY, _child_env, _pipeline

from medvision._offline import BANNERS

#: What a fine-tuning run printed before, one pattern per line kind (Lightning 2.6).
NOISE = re.compile(r"litlogger|litmodels|Tip: |(GPU|TPU|HPU|IPU) available|CUDA_VISIBLE_DEVICES")


@pytest.mark.slow  # a cohort build and a one-epoch fine-tune in a fresh interpreter (as a user runs them)
def test_a_pipeline_run_prints_no_library_advertisement_or_device_banner(tmp_path):
    (tmp_path / "home").mkdir()
    stages = {k: v for k, v in TINY["stages"].items() if k in ("cohort", "ft")}
    pipeline = _pipeline(tmp_path, {**TINY, "stages": stages})
    script = (
        "import sys\n"
        "from medvision.pipeline import load_pipeline, print_summary, run_pipeline\n"  # Lightning imported first
        "print_summary(run_pipeline(load_pipeline(sys.argv[1])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(pipeline)],
        cwd=tmp_path,
        env=_child_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one log, as the demo's is
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "pipeline tiny: 2 stages" in done.stdout and "MLflow parent run" in done.stdout  # our own lines stay
    assert [line for line in done.stdout.splitlines() if NOISE.search(line)] == []


def test_the_banner_filter_drops_only_advertisements_and_device_banners():
    import lightning.pytorch  # noqa: F401 - sets up its loggers, which must keep our filter

    kept: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: kept.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where Lightning's rank_zero_info goes
    log.addHandler(handler)
    try:
        for message in (
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger",
            "GPU available: False, used: False",
            "TPU available: False, using: 0 TPU cores",
            "Restoring states from the checkpoint path at /x/last.ckpt",
            "`Trainer.fit` stopped: `max_epochs=1` reached.",
        ):
            log.info(message)
    finally:
        log.removeHandler(handler)
    assert kept == [
        "Restoring states from the checkpoint path at /x/last.ckpt",
        "`Trainer.fit` stopped: `max_epochs=1` reached.",
    ]
    assert not any(BANNERS.match(m) for m in kept)


def test_the_command_line_drops_highdicom_info_and_keeps_medvision_info(caplog):
    """`predict --dicom-results` printed highdicom's "copy attributes of module ..." dozens of times per result."""
    import logging

    from medvision.cli._errors import run_guarded

    def body() -> None:
        logging.getLogger("highdicom.base").info("copy attributes of module 'Patient'")
        logging.getLogger("medvision.serving").info("3 DICOM reports written")

    with caplog.at_level(logging.INFO):
        run_guarded(body)
    assert "3 DICOM reports written" in caplog.text and "copy attributes" not in caplog.text
