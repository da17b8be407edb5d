"""Training one variant with several processes: `accelerate launch --num_processes N -m ifl.train`.

    cli = train_arguments(spec, llm, vision, manifest_path, out, stage1, stage2, qlora=None,
                          dtype="bfloat16", seed=0, image_folders=folders)
    launch_training(cli, processes=8, deepspeed=True, cpu=False, log=out / spec.name / "launch.log")

The ranks run the same command line a person runs by hand (ifl/train/__main__.py), given every
field of both stages' settings, so what they train is exactly what the caller's settings say
(the variant's DONE records the same recipe, and a caller can read the variant back with
`train_variant`, which finds it done). Each stage resumes from its last checkpoint, so a failed
or killed launch is continued by launching again. A failed launch raises TrainLaunchError
naming its log (and quoting its end).

With `deepspeed` (the full fine-tune on GPUs) the ranks run under DeepSpeed ZeRO-2
(deepspeed_zero2.yaml beside this file: optimizer state and gradients sharded); otherwise under
plain DDP (`--multi_gpu`; on the CPU the ranks form a gloo group, ACCELERATE_USE_CPU).
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from ifl.train.lora import LoraSettings
from ifl.train.settings import StageSettings

DEEPSPEED_ZERO2 = Path(__file__).with_name("deepspeed_zero2.yaml")
LOG_TAIL = 3000   # characters of a failed launch's log quoted in the error


class TrainLaunchError(RuntimeError):
    """`accelerate launch` of a variant's training failed; the message names its log."""


def _text(value) -> str:
    """A value as `python -m ifl.train` reads it back (numbers, else YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)   # str(float) round-trips exactly


def settings_pairs(settings: StageSettings) -> list[str]:
    """key=value for every field of `settings`, as --stage1 / --stage2 take them."""
    fields = dataclasses.asdict(settings)
    if fields.pop("extra"):
        raise ValueError("a stage's `extra` (train_stage keywords) cannot be given to the ranks "
                         "on their command line")
    return [f"{key}={_text(value)}" for key, value in fields.items()]


def train_arguments(spec, llm: str, vision: str, manifest: str | Path, out: str | Path,
                    stage1: StageSettings, stage2: StageSettings, *, qlora: LoraSettings | None,
                    dtype: str, seed: int, image_folders: dict | None = None,
                    template: str | None = None, skip_missing_images: bool = False,
                    threads: int | None = None) -> list[str]:
    """`python -m ifl.train`'s arguments for one variant (`spec`). image_folders: {part: folder}
    for the manifest's pretrain / instruct records (the paper's manifest names none)."""
    args = ["--variant", spec.name, "--llm", str(llm), "--vision", str(vision),
            "--manifest", str(manifest), "--out", str(out), "--dtype", dtype, "--seed", str(seed),
            "--stage1", *settings_pairs(stage1), "--stage2", *settings_pairs(stage2)]
    for part, folder in (image_folders or {}).items():
        args += [f"--{part}-image-folder", str(folder)]
    if qlora is not None:
        args += ["--qlora", *(f"{k}={_text(v)}" for k, v in qlora.as_dict().items())]
    if template is not None:
        args += ["--template", template]
    if skip_missing_images:
        args.append("--skip-missing-images")
    if threads:
        args += ["--threads", str(threads)]
    return args


def free_port() -> int:
    """A free TCP port for the ranks' rendezvous (other runs may share this machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_train_command(cli_args: list[str], *, processes: int, deepspeed: bool,
                             port: int) -> list[str]:
    """The `accelerate launch` command line that trains with `processes` ranks."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if deepspeed:   # the file sets DeepSpeed ZeRO-2 and bf16; --num_processes overrides its 8
        cmd += ["--config_file", str(DEEPSPEED_ZERO2)]
    else:           # torchrun's ranks (also on the CPU, where accelerate's --cpu would start one)
        cmd += ["--multi_gpu", "--mixed_precision", "no"]
    cmd += ["--num_processes", str(processes), "--num_machines", "1", "--dynamo_backend", "no",
            "--main_process_port", str(port)]
    return cmd + ["-m", "ifl.train", *cli_args]


def launch_training(cli_args: list[str], *, processes: int, deepspeed: bool, cpu: bool, log: Path,
                    threads: int | None = None, timeout: float | None = None) -> None:
    """Run `python -m ifl.train cli_args` in `processes` ranks; their output goes to `log`.
    Raises TrainLaunchError naming the log when the launch fails."""
    cmd = accelerate_train_command(cli_args, processes=processes, deepspeed=deepspeed,
                                   port=free_port())
    repo = str(Path(__file__).resolve().parents[2])   # the ranks import this checkout's ifl
    env = os.environ | {"PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    if cpu:
        env |= {"ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(cmd)}\n")
        out.flush()
        run = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if run.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:]
        raise TrainLaunchError(
            f"training with {processes} processes failed (accelerate launch exited "
            f"{run.returncode}). Its log: {log}\n--- end of {log.name} ---\n{tail}\n--- "
            "A rerun resumes each stage from its last checkpoint.")
