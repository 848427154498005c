"""Settings of `longrl data build` (one dataclass tree, loaded with common.config.load_config).

Every field can be set in a YAML file (--config) or as `key.sub=value` on the command line.
API keys are never settings: each endpoint names the environment variable that holds its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_gen.llm_client import ClientSettings
from data_gen.schema import CATEGORIES

ANNOTATORS = ("llm", "groundtruth")
ANSWERERS = ("none", "endpoint", "local", "noisy-oracle")


def shard_of(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N), 0 <= I < N (ValueError naming the setting otherwise)."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard {text!r}: give I/N, e.g. 0/8") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return i, n


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat endpoint (vLLM `vllm serve`, transformers serve, OpenAI)."""

    url: str = ""  # base URL ending in /v1
    model: str = ""  # model name the server knows
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (unset: no key)
    temperature: float = 0.2
    max_tokens: int = 2048


@dataclass
class FilterConfig:
    """Difficulty filter: a model answers each question k times; always-right and always-wrong
    questions are dropped and the pass rate is kept. Near-duplicates go first."""

    answerer: str = "none"  # none | endpoint | local | noisy-oracle (see docs/data.md)
    k: int = 10  # answers per question
    endpoint: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=1.0, max_tokens=1024))
    model_dir: str = ""  # local model folder (answerer "local"; plugged in by the CLI)
    num_frames: int = 8  # frames of the question's span shown to the answerer
    drop_always_right: bool = True
    drop_always_wrong: bool = True
    dedup_threshold: float = 0.95  # similarity of normalised question+options text; >1 disables
    oracle_seed: int = 0  # noisy-oracle only: a simulated answerer for tests and demos


@dataclass
class SplitConfig:
    """Shares of *videos* per split (a video never lands in two splits)."""

    sft: float = 0.35
    rl: float = 0.55
    eval: float = 0.10
    seed: int = 0


@dataclass
class BuildConfig:
    videos: str = ""  # folder of videos, a JSONL manifest, or a `longrl synth` folder
    out: str = ""  # output folder (splits, rejects.jsonl, summary)
    cache_dir: str = ""  # finished units; empty: OUT/cache
    annotator: str = "llm"  # llm | groundtruth (synthetic videos with event logs)
    clip_s: float = 10.0  # clip length for captions
    min_tail_s: float = 2.0  # a shorter last clip is merged into the one before
    frames_per_clip: int = 8  # frames sent to the captioner per clip (the most, with caption_fps)
    caption_fps: float = 0.0  # > 0: frames per clip = clip length x caption_fps, in [1, frames_per_clip]
    frame_max_pixels: int = 448 * 448  # frames are shrunk to at most this many pixels
    jpeg_quality: int = 85
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    questions_per_category: int = 2  # asked of the reasoner per category and video
    groundtruth_questions: int = 12  # per video, groundtruth annotator
    max_qa_attempts: int = 3  # first reply + retries carrying the validation errors
    captioner: EndpointConfig = field(default_factory=lambda: EndpointConfig(max_tokens=512))
    reasoner: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=0.6, max_tokens=8192))
    rewrite: bool = False  # second pass: reasoning rewritten to read as if watching the video
    rewriter: EndpointConfig = field(default_factory=EndpointConfig)
    client: ClientSettings = field(default_factory=ClientSettings)
    filter: FilterConfig = field(default_factory=FilterConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    caption_prompt: str = "caption.v1"  # template files in data_gen/prompts/
    qa_prompt: str = "qa.v1"
    rewrite_prompt: str = "rewrite.v1"
    answer_prompt: str = "answer.v1"
    decode_workers: int = 2  # threads decoding frames (caption phase: videos decoded at once)
    caption_decode: str = "stream"  # stream: each video decoded once, clips in order | per-clip (plain path)
    # Clips decoded ahead of the caption requests in flight (-1: 2 x decode_workers). At most
    # client.concurrency + caption_prefetch clips are alive at once: memory does not grow with
    # the number of videos or clips (issue 18.7).
    caption_prefetch: int = -1
    shard: str = ""  # "I/N": this process builds shard I of N (0-based) into OUT/shards/ (no splits)
    merge_shards: int = 0  # N: merge the N finished shards in OUT/shards/ into the splits
    workers: int = 0  # > 1: run that many shards as Ray tasks (RAY_ADDRESS or a local Ray), then merge
    progress: bool = True

    def check(self) -> None:
        """Raise ValueError naming the first setting that cannot work."""
        if not self.videos or not self.out:
            raise ValueError("videos and out must be set")
        if self.annotator not in ANNOTATORS:
            raise ValueError(f"annotator {self.annotator!r} not in {ANNOTATORS}")
        if self.filter.answerer not in ANSWERERS:
            raise ValueError(f"filter.answerer {self.filter.answerer!r} not in {ANSWERERS}")
        bad = [c for c in self.categories if c not in CATEGORIES]
        if bad or not self.categories:
            raise ValueError(f"categories {bad or '[]'}: each must be one of {CATEGORIES}")
        if self.caption_decode not in ("stream", "per-clip"):
            raise ValueError(f"caption_decode {self.caption_decode!r} not in ('stream', 'per-clip')")
        if self.decode_workers < 1:
            raise ValueError("decode_workers must be >= 1")
        if sum(bool(x) for x in (self.shard, self.merge_shards, self.workers > 1)) > 1:
            raise ValueError("give one of shard, merge_shards and workers")
        if self.shard:
            shard_of(self.shard)
        if self.merge_shards < 0 or self.workers < 0:
            raise ValueError("merge_shards and workers must be >= 0")
        if self.workers > 1 and self.filter.answerer == "local":
            raise ValueError("workers: the local-model answerer lives in the CLI process; run --shard I/N "
                             "per process with --filter-model, then --merge-shards N")
        if self.clip_s <= 0 or self.frames_per_clip < 1 or self.filter.k < 1 or self.caption_fps < 0:
            raise ValueError("clip_s, frames_per_clip and filter.k must be positive")
        shares = (self.splits.sft, self.splits.rl, self.splits.eval)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"split shares {shares} must be >= 0 with a positive sum")
        if self.annotator == "llm":
            for name in ("captioner", "reasoner"):
                ep = getattr(self, name)
                if not ep.url or not ep.model:
                    raise ValueError(f"annotator llm needs {name}.url and {name}.model "
                                     f"(--{name}-url / --{name}-model)")
        if self.rewrite and (not self.rewriter.url or not self.rewriter.model):
            raise ValueError("rewrite needs rewriter.url and rewriter.model")
        if self.filter.answerer == "endpoint" and not (self.filter.endpoint.url and self.filter.endpoint.model):
            raise ValueError("filter.answerer endpoint needs filter.endpoint.url and .model")
        if self.filter.answerer == "local" and not self.filter.model_dir:
            raise ValueError("filter.answerer local needs filter.model_dir")
