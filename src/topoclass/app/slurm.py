"""Slurm: a job script that survives its time limit and preemption, and a check of the time left.

The script asks Slurm for a warning signal some minutes before the limit
(``--signal=B:USR1@LEAD``): the batch shell passes it on as SIGTERM, every
training process finishes its step, one checkpoint is written, all exit with 75,
and the script queues the job again (``--requeue``); the requeued job resumes by
itself (``--resume auto``). A preempted job gets the same SIGTERM from Slurm.
srun starts one process per GPU and topoclass reads its rank from Slurm's
environment, so srun's exit status is the training's (torchrun would hide it).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess

logger = logging.getLogger(__name__)

LEAD_ENV = "TOPOCLASS_SIGNAL_LEAD_S"


def sbatch_script(*, gpus: int, nodes: int, time: str, lead: int, train_args: list[str]) -> str:
    """A ready sbatch script: ``gpus`` per node (0: CPU only), ``nodes`` nodes, ``lead`` s of warning."""
    device = [] if gpus else ["--device", "cpu"]
    command = ["python", "-m", "topoclass", "train", "--resume", "auto", *device, *train_args]
    setup = [
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500}",
    ]
    return _job_script(
        command, nodes=nodes, tasks_per_node=max(gpus, 1), gpus=gpus, time=time, lead=lead, setup=setup
    )


def screen_script(*, shards: int, cpus: int, time: str, lead: int, screen_args: list[str]) -> str:
    """A ready sbatch script for ``topoclass screen``: a job array of ``shards`` tasks, each screening
    its shard with ``cpus`` featurization processes; a task stopped at its time limit requeues itself
    and continues where it stopped. The last task to finish writes the summary and the candidates."""
    command = ["python", "-m", "topoclass", "screen", *screen_args]
    # Expanded by the shell of each array task: which shard, and how many CPUs it was given.
    shard = f'--shard "${{SLURM_ARRAY_TASK_ID}}/{shards}" --workers "${{SLURM_CPUS_PER_TASK}}"'
    return _job_script(
        command, nodes=1, tasks_per_node=1, gpus=0, time=time, lead=lead, cpus=cpus, array=shards, tail=shard
    )


def _job_script(
    command: list[str],
    *,
    nodes: int,
    tasks_per_node: int,
    gpus: int,
    time: str,
    lead: int,
    cpus: int = 8,
    array: int = 0,
    setup: list[str] | None = None,
    tail: str = "",
) -> str:
    """The one job-script layout: a warning signal ``lead`` s before the limit, exit 75 requeues.
    ``command`` is quoted for the shell; ``tail`` is shell text appended as it is."""
    line = " ".join([shlex.join(command), *([tail] if tail else [])])
    requeue = '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' if array else '"$SLURM_JOB_ID"'
    log = "topoclass-%A_%a.out" if array else "topoclass-%j.out"
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=topoclass",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
        *([f"#SBATCH --gpus-per-node={gpus}"] if gpus else []),
        *([f"#SBATCH --array=0-{array - 1}"] if array else []),
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --time={time}",
        f"#SBATCH --signal=B:USR1@{lead}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={log}",
        "",
        f"# {lead} s before the time limit Slurm sends USR1 to this shell, which passes it on as SIGTERM:",
        "# every process finishes its step (a checkpoint, or the chunk it screens) and exits with 75.",
        f"export {LEAD_ENV}={lead}",
        *(setup or []),
        "",
        "trap 'kill -TERM \"$child\" 2>/dev/null' USR1 TERM",
        "srun --kill-on-bad-exit=0 " + line + " &",
        "child=$!",
        "# wait returns early when a trapped signal arrives: wait again for the command's own exit status.",
        'wait "$child"; code=$?',
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done',
        "",
        "# 75: stopped with the work kept (time limit, preemption): queue the continuation.",
        f'if [ "$code" -eq 75 ]; then scontrol requeue {requeue}; fi',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def warn_if_a_save_may_not_fit(last_save_seconds: float | None) -> None:
    """Inside a Slurm job: say so when the time left, or the signal's lead, is shorter than a save."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    left = _time_left(job)
    lead = float(os.environ.get(LEAD_ENV, "0") or 0)
    if left is not None:
        logger.info("Slurm job %s: %s of wall time left", job, _clock(left))
    if last_save_seconds is None:
        return
    if lead and last_save_seconds > lead:
        logger.warning(
            "The last checkpoint took %.0f s, longer than the %.0f s warning before the time limit: "
            "a stop at the limit may not finish its checkpoint (give a longer --signal lead)",
            last_save_seconds,
            lead,
        )
    if left is not None and left < last_save_seconds:
        logger.warning("Less wall time is left (%s) than one checkpoint takes", _clock(left))


def _time_left(job: str) -> float | None:
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_slurm_duration(out.stdout.strip()) if out.returncode == 0 else None


def parse_slurm_duration(text: str) -> float | None:
    """Seconds of a Slurm duration: ``D-HH:MM:SS``, ``HH:MM:SS`` or ``MM:SS``; None otherwise."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if match is None:
        return None
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
