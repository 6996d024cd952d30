"""The smallest whole study, and a fresh interpreter to run it in, for the hostile-run tests that need a real
`medvision run`: a pipeline file written from a dict, and a child environment with its own home, no CI variables
(which would quiet MLflow's telemetry by themselves) and an audit hook that writes down and refuses any connection
that is not loopback.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _pipeline(tmp_path: Path, data: dict, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


KEY = "00112233445566778899aabbccddeeff"


#: The smallest whole study: synthetic cohort -> 1-epoch fine-tune -> evaluation -> report (CPU, seconds).
TINY = {
    "name": "tiny",
    "output_dir": "out",
    "tracking": {"experiment": "tiny"},
    "stages": {
        "cohort": {"kind": "cohort", "synth": {"kind": "derm", "patients": 30, "seed": 0, "size": 32}},
        "ft": {
            "kind": "finetune",
            "cohort": "cohort",
            "config": {
                "backbone": {"name": "resnet-tiny", "weights": "none"},
                "data": {"batch_size": 16},
                "optim": {"name": "adamw", "lr": 0.003, "epochs": 1, "warmup_epochs": 0},
                "trainer": {"accelerator": "cpu", "progress_bar": False},
            },
        },
        "evaluate": {
            "kind": "evaluate",
            "models": ["ft"],
            "sets": ["test"],
            "subgroups": ["sex"],
            "bootstrap": 0,
            "saliency": 0,
            "min_patients": 2,
        },
        "report": {"kind": "report", "evaluation": "evaluate"},
    },
}


#: Installed in the child interpreter through sitecustomize: every name lookup or connect that is not
#: loopback (or a Unix socket) is written down and refused.
_GUARD = """
import os, sys
_LOOPBACK = {"127.0.0.1", "::1", "localhost", "0.0.0.0", None}
def _guard(event, args):
    host = None
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, (str, bytes)):
            return  # a Unix socket
        host = address[0]
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        host = args[0]
    else:
        return
    if isinstance(host, bytes):
        host = host.decode()
    if host in _LOOPBACK:
        return
    with open(os.environ["NETWORK_LOG"], "a") as f:
        f.write(f"{event} {host}\\n")
    raise OSError(f"network is off in this test ({event} {host})")
sys.addaudithook(_guard)
"""


#: Variables under which MLflow keeps its telemetry quiet by itself (CI, pytest): the child must not have them,
#: or the test would pass without our switch.
_CI_VARS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")


def _child_env(tmp_path: Path) -> dict[str, str]:
    import os

    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(_GUARD)
    env = {k: v for k, v in os.environ.items() if k not in _CI_VARS and not k.startswith(("MLFLOW_", "XDG_"))}
    env.pop("DO_NOT_TRACK", None)
    env.update(
        HOME=str(tmp_path / "home"),
        NETWORK_LOG=str(tmp_path / "network.log"),
        PYTHONPATH=os.pathsep.join([str(guard), str(REPO)]),
        MEDVISION_PSEUDONYM_KEY=KEY,
    )
    return env
