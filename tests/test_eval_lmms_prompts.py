"""lmms-eval's question prompts reproduced per benchmark (issue 14.11), on the released-schema
fixtures: the exact text lmms-eval's doc_to_text gives (with its default pre/post prompts), and
where it differs from the benchmark prompts we use by default."""

from __future__ import annotations

import pytest

from eval.lmms_prompts import MAX_NEW_TOKENS, lmms_prompt
from eval.task import get_task

LETTER = "Answer with the option's letter from the given choices directly."
EXPECTED = {
    "videomme": (
        "001-1",
        "Select the best answer to the following multiple-choice question based on the video and "
        "the subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "How many red shapes appear?\nA. One.\nB. Two.\nC. Three.\nD. Four.\nThe best answer is:",
    ),
    "longvideobench": (
        "86CxyhFV9MI_0",
        "In the video, which subtitles appear at the same time as the man?\nA. hello\n"
        f"B. goodbye\nC. thanks\nD. welcome\n{LETTER}\n",
    ),
    "mlvu": (
        "1_plotQA_0",
        "\nWhat color is the main male character in the video?\n(A) Yellow\n(B) Red\n(C) Green\n"
        "(D) Blue\nOnly give the best option.\n\nBest option: (",
    ),
    "nextqa": (
        "6233408665_8",
        "what did the people on the sofa do after the lady in pink finished singing?\nA. sitting\n"
        "B. give it to the girl\nC. take music sheet\nD. clap\nE. walk in circles",
    ),
    "perceptiontest": (
        "video_10909_0",
        f"Is the camera moving or static?\nA. I don't know\nB. moving\nC. static or shaking\n{LETTER}",
    ),
    "activitynetqa": (
        "v_--1DO2V4K74_1",
        "what is the person in the video doing? Answer the question using a single word or phrase.",
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lmms_prompt_text(name, make_benchmark) -> None:
    qid, text = EXPECTED[name]
    items = {it.qid: it for it in get_task(name).load(make_benchmark(name))}
    assert lmms_prompt(name, items[qid]) == text


def test_where_ours_differ(make_benchmark) -> None:
    """The differences docs/eval.md lists: Video-MME (official: 'based on the video.'), NExT-QA
    (we add the letter instruction), MLVU (official instruction, no '(' prime), ActivityNet-QA
    (newline vs space); Perception Test is the same."""
    def both(name: str, qid: str) -> tuple[str, str]:
        task = get_task(name)
        item = {it.qid: it for it in task.load(make_benchmark(name))}[qid]
        return task.render_prompt(item), lmms_prompt(name, item)

    ours, lmms = both("videomme", "001-1")
    assert "based on the video. Respond" in ours and "based on the video and the subtitles." in lmms
    ours, lmms = both("nextqa", "6233408665_8")
    assert ours == lmms + "\n" + LETTER
    ours, lmms = both("mlvu", "1_plotQA_0")
    assert ours.startswith("Carefully watch") and lmms.endswith("Best option: (")
    ours, lmms = both("activitynetqa", "v_--1DO2V4K74_1")
    assert ours.replace("?\n", "? ") == lmms
    ours, lmms = both("perceptiontest", "video_10909_0")
    assert ours == lmms


def test_subtitles_and_benchmarks_without_an_lmms_prompt(make_benchmark) -> None:
    item = get_task("videomme").load(make_benchmark("videomme"))[0]
    with_subs = lmms_prompt("videomme", item, "welcome to the show")
    assert with_subs.startswith("This video's subtitles are listed below: \nwelcome to the show\n"
                                "Select the best answer")
    assert lmms_prompt("videomme", item, "", subtitle_file=False).startswith(
        "This video's subtitles are listed below: \nNo subtitles available\nSelect")
    # a subtitled video with no line at the sampled frames: lmms-eval shows an empty block
    assert lmms_prompt("videomme", item, "").startswith(
        "This video's subtitles are listed below: \n\nSelect")
    vn = get_task("vnbench").load(make_benchmark("vnbench"))[0]
    assert lmms_prompt("vnbench", vn) is None and lmms_prompt("synth", vn) is None
    assert MAX_NEW_TOKENS["activitynetqa"] == 64 and MAX_NEW_TOKENS["videomme"] == 16
