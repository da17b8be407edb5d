"""An optional accuracy judge over an OpenAI-compatible chat endpoint (the paper used GPT-4o, §4.3).

Off by default and never required: without it, notebook 04's accuracy surrogate is "the
reference answer appears in the response", and DSL debiases either surrogate with the
annotators' `correct` labels. The judge sees the question, the reference (where the benchmark
has one) and the response, and answers yes or no. Verdicts are cached in a JSONL file, one line
per response, so an interrupted run resumes and a rerun costs nothing.

    correct = judge_accuracy(scored, endpoint="https://api.openai.com/v1", model="gpt-4o",
                             cache="runs/paper/04_score_languages/judge_cache.jsonl")

The key is read from the environment variable named by `api_key_env` (OPENAI_API_KEY).
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

PROMPT = ("You grade answers to questions about images. Question: {question}\n"
          "Reference answer (may be empty): {reference}\nModel answer: {response}\n"
          "Is the model answer correct given the question and the reference? Reply with one word: "
          "yes or no.")
KEY = ("model", "task_id", "condition")


def _post_json(url: str, payload: dict, headers: dict, timeout: float = 60) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read().decode())


def verdict(text: str) -> float:
    """1.0 for yes, 0.0 for no, NaN for anything else (counted as not judged)."""
    word = text.strip().lower().strip(".! \n")
    return 1.0 if word.startswith("yes") else 0.0 if word.startswith("no") else float("nan")


def judge_accuracy(scored: pd.DataFrame, *, endpoint: str, model: str | None, cache: str | os.PathLike,
                   api_key_env: str = "OPENAI_API_KEY", post: Callable = _post_json,
                   progress: bool = True) -> np.ndarray:
    """One verdict (1 / 0 / NaN) per row of `scored` (columns model, task_id, condition,
    question, reference, response), asking the endpoint only for rows not in `cache`."""
    if not model:
        raise ValueError("04_score_languages.judge_model must name the judge's model when "
                         "judge_endpoint is set")
    cache = Path(cache)
    done = {}
    if cache.exists():
        for line in cache.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption: redo it
                continue
            done[tuple(row[k] for k in KEY)] = row["verdict"]
    key = os.environ.get(api_key_env, "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = endpoint.rstrip("/") + "/chat/completions"
    todo = [r for r in scored.itertuples() if (r.model, r.task_id, r.condition) not in done]
    with open(cache, "a", encoding="utf-8") as out:
        for r in tqdm(todo, desc="judge", disable=not progress):
            content = PROMPT.format(question=r.question, reference=r.reference or "",
                                    response=r.response or "")
            reply = post(url, {"model": model, "temperature": 0,
                               "messages": [{"role": "user", "content": content}]}, headers)
            value = verdict(reply["choices"][0]["message"]["content"])
            done[(r.model, r.task_id, r.condition)] = value
            out.write(json.dumps({"model": r.model, "task_id": r.task_id, "condition": r.condition,
                                  "verdict": value}) + "\n")
            out.flush()
    return np.array([done[(r.model, r.task_id, r.condition)] for r in scored.itertuples()], dtype=float)
