"""The job script for a sharded screen: an array of shards that requeue themselves."""

from __future__ import annotations

from topoclass.cli import main


def test_screen_template_is_a_self_requeuing_job_array(capsys):
    code = main(
        ["slurm-template", "--shards", "16", "--cpus", "4", "screen", "tqc2020", "cifs/*.cif", "-o", "out"]
    )
    script = capsys.readouterr().out
    assert code == 0
    assert "#SBATCH --array=0-15" in script and "#SBATCH --cpus-per-task=4" in script
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --gpus-per-node" not in script
    assert (
        "python -m topoclass screen tqc2020 'cifs/*.cif' -o out "
        '--shard "${SLURM_ARRAY_TASK_ID}/16" --workers "${SLURM_CPUS_PER_TASK}"'
    ) in script
    assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in script


def test_training_template_keeps_its_form(capsys):
    assert main(["slurm-template", "--gpus", "2", "--", "--dataset", "tqc2020"]) == 0
    script = capsys.readouterr().out
    assert "srun --kill-on-bad-exit=0 python -m topoclass train --resume auto --dataset tqc2020 &" in script
    assert "#SBATCH --gpus-per-node=2" in script and "--array" not in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script


def test_screen_template_runs_its_shard_and_requeues_it_on_75(tmp_path, capsys):
    import subprocess

    main(["slurm-template", "--shards", "16", "screen", "tqc2020", "cifs/", "-o", "out"])
    script = tmp_path / "screen.sbatch"
    script.write_text(capsys.readouterr().out)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool, code in (("srun", 75), ("scontrol", 0)):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit {code}\n')
        (bin_dir / tool).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_CPUS_PER_TASK": "4",
    }
    finished = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    logged = calls.read_text()
    assert finished.returncode == 75
    assert "screen tqc2020 cifs/ -o out --shard 3/16 --workers 4" in logged, logged
    assert "scontrol requeue 7_3" in logged, logged
