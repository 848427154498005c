"""`longrl data build|import`: make the LongVideo-Reason dataset (sft / rl / eval splits)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from pipelines.cli_common import (
    CONFIG_HELP,
    OVERRIDES_HELP,
    PRINT_CONFIG_HELP,
    console,
    fail,
    resolve_config,
)

app = typer.Typer(help="LongVideo-Reason data: build from videos (captions -> reasoning QA -> "
                  "filter -> splits) or import the released JSON.", no_args_is_help=True)


class LocalModelAnswerer:
    """Difficulty-filter answerer on a local model folder, built from training's own prompt,
    video and generation code (data_gen does not import training; the CLI joins them).
    One question at a time in a worker thread; k samples in one batch."""

    def __init__(self, model_dir: Path, num_frames: int, temperature: float, max_new_tokens: int = 256):
        from training.model_io import load_model, load_tokenizer
        from training.video_inputs import VideoSampling, VisionSpec

        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.spec = VisionSpec.from_model_dir(self.model_dir)
        self.sampling = VideoSampling(num_frames=num_frames, min_frames=2)
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        from training.model_folder import folder_fingerprint

        # the content (weights, tokenizer), not path/size/mtime: a moved copy reuses the
        # cached answers, another model in the same place does not
        self.identity = (f"local:{folder_fingerprint(self.model_dir)}:t={temperature}:frames={num_frames}"
                         f":tokens={max_new_tokens}")
        self._lock = asyncio.Lock()

    def _answer(self, record, attempts: int) -> list[str]:
        import torch

        from data_gen.difficulty import attempt_seed
        from training.generation import generate
        from training.mm_batch import collate
        from training.prompts import encode_example
        from training.video_inputs import load_video_patches

        video = load_video_patches(record.video_path, self.sampling, self.spec, record.clip_start_s,
                                   record.clip_end_s or None)
        enc = encode_example(self.tokenizer, record, video.num_tokens)
        batch = collate([enc] * attempts, [video] * attempts, self.tokenizer.pad_token_id)
        stop = [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        gen = torch.Generator().manual_seed(attempt_seed(record.id, 0))
        out = generate(self.model, batch, stop, self.tokenizer.pad_token_id, max_new_tokens=self.max_new_tokens,
                       temperature=self.temperature, generator=gen)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in out.token_ids]

    async def answer(self, record, attempts: int) -> list[str]:
        async with self._lock:  # one model, one question at a time
            return await asyncio.to_thread(self._answer, record, attempts)


@app.command("build")
def build(
    videos: Path = typer.Option(..., "--videos", help="A folder of videos, a JSONL manifest ({\"path\", \"video_id\"} per line) or a `longrl synth` folder."),
    out: Path = typer.Option(..., "--out", help="Output folder: sft/ rl/ eval/ (datasets) + .parquet, rejects.jsonl, summary.json/.png, cache/."),
    config: Path = typer.Option(None, "--config", help=CONFIG_HELP),
    print_config: bool = typer.Option(False, "--print-config", help=PRINT_CONFIG_HELP),
    annotator: str = typer.Option(None, "--annotator", help="llm (captioner + reasoner endpoints) or groundtruth (`longrl synth` videos: captions and QA from their event logs) [default llm]."),
    captioner_url: str = typer.Option(None, "--captioner-url", help="OpenAI-compatible base URL of the video captioner (e.g. http://host:8000/v1 from `vllm serve`)."),
    captioner_model: str = typer.Option(None, "--captioner-model", help="Captioner model name."),
    reasoner_url: str = typer.Option(None, "--reasoner-url", help="OpenAI-compatible base URL of the reasoning LLM that writes QA."),
    reasoner_model: str = typer.Option(None, "--reasoner-model", help="Reasoner model name."),
    rewrite: bool = typer.Option(None, "--rewrite/--no-rewrite", help="Second pass rewriting each reasoning as if watching the video (needs rewriter.url/model)."),
    frames: int = typer.Option(None, "--frames", help="Frames per clip sent to the captioner [default 8]."),
    filter_url: str = typer.Option(None, "--filter-url", help="Difficulty filter on an OpenAI-compatible endpoint (with --filter-model NAME)."),
    filter_model: str = typer.Option(None, "--filter-model", help="With --filter-url: the endpoint's model name. Without: a local model folder (answers with training's generation code)."),
    filter_answerer: str = typer.Option(None, "--filter-answerer", help="none | endpoint | local | noisy-oracle (a simulated answerer for demos; its pass rates mean nothing) [default: from --filter-url/--filter-model, else none]."),
    k: int = typer.Option(None, "--k", help="Answers per question in the difficulty filter [default 10]."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable holding the API key for every endpoint [default OPENAI_API_KEY]. Keys are never taken from the command line."),
    concurrency: int = typer.Option(None, "--concurrency", help="Requests in flight per endpoint [default 16]."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars or table."),
    shard: str = typer.Option(None, "--shard", help="I/N: build shard I of N (videos I, I+N, ... in discovery order) into OUT/shards/; then one --merge-shards N step. Shards share OUT/cache (shared storage when they run on several machines)."),
    merge_shards: int = typer.Option(None, "--merge-shards", help="N: merge the N finished shards in OUT/shards/ into the splits (fails naming missing or stale shards)."),
    workers: int = typer.Option(None, "--workers", help="N > 1: run N shards as Ray tasks (RAY_ADDRESS, else a local Ray), skipping finished ones, then merge."),
    overrides: list[str] = typer.Argument(None, help=OVERRIDES_HELP + " Keys: --print-config lists them, e.g. clip_s=20 filter.k=5 splits.eval=0.2."),
) -> None:
    """Build the LongVideo-Reason dataset: cut videos into clips, caption them, have a reasoning
    model write question-answer pairs with chains of thought per category, validate them,
    drop near-duplicates and too easy / too hard questions, and split by video into sft / rl /
    eval. Interrupted runs resume from OUT/cache. See docs/data.md."""
    from common import tracking
    from common.secrets import install_log_redaction
    from data_gen.build import BuildError, run_build
    from data_gen.build_config import BuildConfig
    from data_gen.shards import ShardError

    install_log_redaction()
    fixed = {"videos": str(videos), "out": str(out), "annotator": annotator,
             "captioner.url": captioner_url, "captioner.model": captioner_model,
             "reasoner.url": reasoner_url, "reasoner.model": reasoner_model, "rewrite": rewrite,
             "frames_per_clip": frames, "filter.k": k, "client.concurrency": concurrency,
             "shard": shard, "merge_shards": merge_shards, "workers": workers}
    if no_progress:
        fixed["progress"] = False
    if filter_url:
        fixed.update({"filter.answerer": "endpoint", "filter.endpoint.url": filter_url,
                      "filter.endpoint.model": filter_model})
    elif filter_model:
        fixed.update({"filter.answerer": "local", "filter.model_dir": filter_model})
    if filter_answerer:
        fixed["filter.answerer"] = filter_answerer
    if api_key_env:
        for ep in ("captioner", "reasoner", "rewriter", "filter.endpoint"):
            fixed[f"{ep}.api_key_env"] = api_key_env
    cfg = resolve_config(BuildConfig, config, overrides, print_config, **fixed)
    try:
        cfg.check()
    except ValueError as exc:
        fail(str(exc), 2)
    answerer = None
    if cfg.filter.answerer == "local":
        from training.model_folder import ModelFolderError, validate_model_folder

        if not Path(cfg.filter.model_dir).is_dir():
            fail(f"--filter-model {cfg.filter.model_dir}: not a model folder (give --filter-url for an endpoint)", 2)
        try:
            validate_model_folder(cfg.filter.model_dir)
        except ModelFolderError as exc:
            fail(f"--filter-model {exc}", 2)
        answerer = LocalModelAnswerer(Path(cfg.filter.model_dir), cfg.filter.num_frames,
                                      cfg.filter.endpoint.temperature, cfg.filter.endpoint.max_tokens)
    with tracking.stage_run("data", config=cfg) as run:
        try:
            result = run_build(cfg, answerer)
        except (BuildError, ShardError, FileNotFoundError) as exc:
            fail(str(exc))
        if cfg.shard:  # no splits yet: the merge step logs the datasets
            q = result.summary["questions"]
            run.log_metrics({"shard_questions_kept": q["kept"], "shard_questions_generated": q["generated"]})
            console.print(f"[green]done[/green]: shard {cfg.shard} -> {out / 'shards'} ({q['kept']} questions kept)")
            return
        run.log_metrics({"questions_kept": result.summary["questions"]["kept"],
                         "questions_generated": result.summary["questions"]["generated"],
                         "videos_usable": result.summary["videos"]["usable"],
                         **{f"records_{s}": n for s, n in result.counts.items()}})
        for split, n in result.counts.items():
            if n:  # MLflow cannot describe an empty dataset (no row to infer a schema from)
                run.log_dataset(out / split, name=f"longvideo-reason-{split}", context=split)
        for name in ("summary.json", "summary.png", "rejects.jsonl", "splits.json"):
            run.log_artifact(out / name, "data")
    console.print(f"[green]done[/green]: {out} ({result.counts})")


@app.command("import")
def import_(
    source: Path = typer.Option(..., "--source", help="Released LongVideo-Reason file(s): train.jsonl / test.jsonl / openended.jsonl or a JSON list (fields problem, answer, videos, problem_type, reasoning)."),
    out: Path = typer.Option(..., "--out", help="Output folder: sft/ rl/ eval/ (datasets) + .parquet, rejects.jsonl."),
    video_dir: Path = typer.Option(..., "--video-dir", help="Folder the `videos` paths are relative to (the parent of longvila_videos/)."),
    split: str = typer.Option(None, "--split", help="Put every record in this split (sft, rl or eval) instead of splitting by video."),
    probe: bool = typer.Option(True, "--probe/--no-probe", help="Probe each video (duration, digest); missing or broken videos are rejected with their reason."),
    seed: int = typer.Option(0, "--seed", help="Seed of the by-video split."),
) -> None:
    """Convert the released LongVideo-Reason JSON into the longrl record schema and save it as
    sft / rl / eval splits (by video). See docs/data.md for the field mapping."""
    from data_gen.import_lvr import ImportError_, import_longvideo_reason

    try:
        counts, n_rejects = import_longvideo_reason(source, out, video_dir, split=split, probe=probe, seed=seed)
    except (ImportError_, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    console.print(f"[green]done[/green]: {out} ({counts}; {n_rejects} rejected, see rejects.jsonl)")
