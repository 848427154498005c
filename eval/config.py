"""`longrl eval` settings (EvalConfig) and the resume guard: which settings change answers, and
refusing to mix predictions made with different ones into one run folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.answers import NUMERIC_REL_TOL
from eval import report
from eval.engines.openai_engine import EndpointConfig
from eval.limits import check_limit
from eval.task import TaskSpec, get_task
from training.grpo.judge import JudgeConfig

PREDICTIONS = "predictions.jsonl"
RUN_INFO = "run_info.json"
REASONING_MAX_NEW_TOKENS = 1024
NOT_COMPARED = ("model",)  # a moved folder is the same model: its fingerprint is compared


@dataclass
class EvalConfig:
    """Settings of `longrl eval` (YAML + key=value overrides; CLI options set the common ones)."""

    # Hugging Face model folder (tiny test model or Qwen2.5-VL-*); with engine openai, the name
    # the endpoint serves the model under
    model: str = ""
    benchmarks: list[str] = field(default_factory=lambda: ["synth"])  # registered task names
    data: str = ""  # folder with the benchmark's released files (or one sub-folder per benchmark)
    out: str = ""  # output folder: one sub-folder per benchmark + summary
    engine: str = "hf"  # hf (transformers) | vllm (GPU) | openai (an OpenAI-compatible endpoint)
    frames: int = 16  # frames per video, uniformly spaced (used when fps == 0)
    fps: float = 0.0  # frames per second instead of a fixed count (bounded by min/max_frames)
    min_frames: int = 4
    max_frames: int = 256
    min_pixels: int = 0  # per-frame pixel budget; 0: the model folder's video processor config
    max_pixels: int = 0
    total_pixels: int = 0  # cap over all frames of a clip (qwen-vl-utils style); 0: off
    subtitles: bool = False  # show subtitle lines at the sampled frame times (Video-MME, LVB)
    # questions per benchmark: N (whole 4-try groups, spread over every task of a macro
    # headline; see eval.limits.limit_items), a fraction 0 < x < 1 of them, or 0: all
    limit: float = 0
    prompt_style: str = "auto"  # benchmark | reasoning | lmms (lmms-eval's text) | auto (native)
    max_new_tokens: int = 0  # 0: the task's default (REASONING_MAX_NEW_TOKENS when reasoning)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0  # nucleus sampling (with temperature > 0); 1: off
    num_beams: int = 1  # beam search width (greedy beams, temperature 0); 1: off
    # numeric answers: |pred - gold| <= max(1e-6, numeric_rel_tol * |gold|); the default is the
    # GRPO reward's (common.answers.NUMERIC_REL_TOL), so training and evaluation agree
    numeric_rel_tol: float = NUMERIC_REL_TOL
    batch_size: int = 4
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto (bf16 on GPU, fp32 on CPU)
    seed: int = 0
    bootstrap: int = 2000  # bootstrap resamples for the 95 % intervals
    overwrite: bool = False  # discard existing predictions in OUT instead of resuming
    # "i/n": answer only shard i of n of each benchmark (one process/GPU each, same --out);
    # the last shard to finish merges (eval/shards.py); "": the whole benchmark
    shard: str = ""
    vllm_max_model_len: int = 32768
    vllm_gpu_memory_utilization: float = 0.85
    vllm_tensor_parallel_size: int = 1  # GPUs one vLLM engine shards the model over
    # engine openai: the endpoint (base_url, concurrency, retries, frame encoding)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # LLM judge for open-ended answers
    # open-ended answers when no judge is configured: False -> "ungraded" (left out of accuracy
    # and counted apart - by design, not a failure); True -> "judge_error" (a failure, which the
    # pipeline's gate counts): for runs whose score must cover open-ended questions
    require_judge: bool = False

    def sampling(self) -> Any:
        from training.video_inputs import VideoSampling

        return VideoSampling(
            num_frames=self.frames,
            fps=self.fps,
            min_frames=self.min_frames,
            max_frames=self.max_frames,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            total_pixels=self.total_pixels,
        )

    def check(self) -> None:
        if not self.model or not self.out:
            raise ValueError("model, data and out are required")
        needing = [b for b in self.benchmarks if get_task(b).needs_data]
        if not self.data and needing:
            raise ValueError(f"data is required (benchmark {', '.join(needing)} reads its files from --data)")
        check_modalities(self)
        if self.frames <= 0 and self.fps <= 0:
            raise ValueError("give frames > 0 or fps > 0")
        if self.prompt_style not in ("auto", "benchmark", "reasoning", "lmms"):
            raise ValueError(
                f"prompt_style {self.prompt_style!r} not in auto|benchmark|reasoning|lmms"
            )
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        from eval.engines import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; known: {', '.join(ENGINES)}")
        if self.engine == "openai":
            self.endpoint.check()
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p:g} must be in (0, 1]")
        if self.num_beams < 1:
            raise ValueError("num_beams must be >= 1")
        if self.num_beams > 1 and self.temperature > 0:
            raise ValueError("num_beams > 1 is beam search (deterministic): use temperature 0")
        from training.grpo.judge_prompts import get_prompt

        get_prompt(self.judge.prompt)  # an unknown judge.prompt names the known ones, up front
        if self.vllm_tensor_parallel_size < 1:
            raise ValueError("vllm_tensor_parallel_size must be >= 1")
        if self.vllm_tensor_parallel_size > 1 and self.engine != "vllm":
            raise ValueError(  # the hf engine runs on one device: the option would be ignored
                f"--tensor-parallel-size {self.vllm_tensor_parallel_size} needs --engine vllm"
            )
        check_limit(self.limit)
        from eval.shards import parse_shard

        if parse_shard(self.shard) is not None and self.overwrite:
            raise ValueError(
                "--overwrite with --shard would discard the other shards' predictions: start "
                "a fresh sharded run in another --out (or run --overwrite once without --shard)"
            )


def check_modalities(cfg: EvalConfig) -> None:
    """A video benchmark asked of a text-only model folder is refused in one line (a text
    benchmark runs on any model: vision-language models answer it without a video)."""
    if cfg.engine not in ("hf", "vllm") or not cfg.model:
        return  # a served model: the endpoint knows what it takes
    from training.models import FAMILIES, model_type_of

    try:
        family = FAMILIES.get(model_type_of(cfg.model) or "")
    except (OSError, ValueError):  # an unreadable config.json: the folder check names it
        return
    if family is None or family.has_vision:
        return
    video = [b for b in cfg.benchmarks if get_task(b).modality == "video"]
    if video:
        from eval.task import list_tasks

        text = ", ".join(t.name for t in list_tasks() if t.modality == "text")
        raise ValueError(
            f"benchmark {', '.join(video)} needs video input, but {cfg.model} is a text-only "
            f"{family.title} model (model_type {family.model_type}); text benchmarks: {text}"
        )


def benchmark_dir_name(task: TaskSpec, subtitles: bool) -> str:
    """OUT/<this>/ of a benchmark: its name, plus "_subtitles" when subtitles are shown (another
    prompt, so another run). The one place the name is made: the runner writes there and the
    pipeline's evaluation step reads metrics.json from there."""
    return task.name + ("_subtitles" if subtitles and task.supports_subtitles else "")


def output_dir_names(cfg: EvalConfig) -> list[str]:
    """OUT/<name>/ of every benchmark of `cfg`, in order (unknown benchmarks raise KeyError)."""
    return [benchmark_dir_name(get_task(name), cfg.subtitles) for name in cfg.benchmarks]


class SettingsMismatch(ValueError):
    pass


_SERVED: dict[tuple[str, str], dict[str, Any]] = {}


def served_entry(cfg: EvalConfig) -> dict[str, Any]:
    """The endpoint's /models entry for cfg.model (asked once per endpoint and model)."""
    from eval.engines.openai_engine import served_model

    key = (cfg.endpoint.base_url, cfg.model)
    if key not in _SERVED:
        _SERVED[key] = served_model(cfg.endpoint, cfg.model)
    return _SERVED[key]


def model_identity(cfg: EvalConfig) -> tuple[str, str]:
    """(model, fingerprint) as run_info.json keeps them: a folder's resolved path and
    `model_fingerprint`, or a served model's name and its /models entry's fingerprint."""
    if cfg.engine == "openai":
        from eval.engines.openai_engine import endpoint_fingerprint

        return cfg.model, endpoint_fingerprint(served_entry(cfg))
    return str(Path(cfg.model).resolve()), model_fingerprint(cfg.model)


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of a model folder's content: weights, config, tokenizer, chat template
    (training.model_folder.folder_fingerprint; names and sizes alone let another model with the
    same shapes resume into this one's predictions)."""
    from training.model_folder import check_model_dir, folder_fingerprint

    return folder_fingerprint(check_model_dir(model_dir))


def run_settings(
    cfg: EvalConfig, task: TaskSpec, style: str, max_new_tokens: int
) -> dict[str, Any]:
    model, fingerprint = model_identity(cfg)
    settings = {
        "benchmark": task.name,
        "model": model,
        "model_fingerprint": fingerprint,
        "engine": cfg.engine,
        "frames": cfg.frames if cfg.fps <= 0 else 0,
        "fps": cfg.fps,
        "min_frames": cfg.min_frames,
        "max_frames": cfg.max_frames,
        "min_pixels": cfg.min_pixels,
        "max_pixels": cfg.max_pixels,
        "total_pixels": cfg.total_pixels,
        "subtitles": bool(cfg.subtitles and task.supports_subtitles),
        "prompt_style": style,
        "max_new_tokens": max_new_tokens,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "dtype": resolved_dtype(cfg),  # "auto" would let a CPU fp32 and a GPU bf16 run mix
        "numeric_rel_tol": cfg.numeric_rel_tol,
    }
    if task.modality == "text":  # no video: frame and pixel settings change nothing
        for key in ("frames", "fps", "min_frames", "max_frames", "min_pixels", "max_pixels",
                    "total_pixels", "subtitles"):
            del settings[key]
    # only when set: folders written before these options existed resume unchanged
    if cfg.top_p != 1.0:
        settings["top_p"] = cfg.top_p
    if cfg.num_beams != 1:
        settings["num_beams"] = cfg.num_beams
    return settings


def resolved_dtype(cfg: EvalConfig) -> str:
    """The dtype the engine will run in: `auto` is bf16 on a GPU (always for vLLM), fp32 on CPU."""
    from eval.engines import resolve_device, resolve_dtype

    if cfg.engine == "openai":
        return "served"  # the server's own choice; the fingerprint names the served model
    if cfg.engine == "vllm":
        return resolve_dtype(cfg.dtype, "cuda")
    return resolve_dtype(cfg.dtype, resolve_device(cfg.device))


def check_resume(bench_dir: Path, settings: dict[str, Any], overwrite: bool, record: bool = True) -> None:
    """Refuse predictions made with other settings (SettingsMismatch); then, with `record`,
    start the folder (run_info.json; --overwrite discards what it held). `record=False` only
    checks: the runner checks every benchmark before writing anything (a refused resume must
    not leave the refused settings in eval_config.yaml)."""
    from eval.shards import shard_files

    info_path, preds = bench_dir / RUN_INFO, bench_dir / PREDICTIONS
    if not record and overwrite:
        return
    if overwrite:
        for p in (info_path, preds, *shard_files(bench_dir)):
            p.unlink(missing_ok=True)
    elif info_path.is_file():
        old = json.loads(info_path.read_text())["settings"]
        diff = {
            k: (old.get(k), v)
            for k, v in settings.items()
            if old.get(k) != v and k not in NOT_COMPARED
        }
        if diff and (preds.is_file() or shard_files(bench_dir)):
            raise SettingsMismatch(
                f"{bench_dir} holds predictions made with other settings "
                + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                + "; use --overwrite or another --out"
            )
    if not record:
        return
    bench_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(info_path, {"settings": settings})
