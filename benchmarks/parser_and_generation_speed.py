"""Wall time of the answer parser on hostile 100k-character completions and of the synthetic worlds' samples.

    OMP_NUM_THREADS=1 python benchmarks/parser_and_generation_speed.py \
        --out benchmarks/results/cpu_parser_and_generation_speed.json

These were wall-clock asserts in the tests (a 0.5 s bound for the parser's six inputs, 30 ms a sample for each
world), which a shared CPU can break without any regression. The tests now check what the speed rests on (the
parser's scans are linear and it decodes at most ``MAX_PAYLOAD_CHARS`` characters of JSON: tests/test_rewards.py);
the times themselves are measured here. Each number is the median over ``--rounds`` rounds; the machine (platform,
CPU count, torch threads, its load average when the run began) is recorded with them.
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from grto_lib.data import NAMES, load_dataset
from grto_lib.rewards import format_reward, parse_answer


def hostile_completions() -> dict[str, str]:
    """The parser's worst cases, 100k characters each: unclosed tags, deep nesting, long whitespace and thoughts,
    20 000 empty answers (the inputs of tests/test_rewards.py's linear-work test)."""
    answer = '{"bbox": [1, 2, 3, 4], "points": []}'
    return {
        "open_brackets": "<" * 100_000,
        "unclosed_answer_of_brackets": "<answer>" + "[" * 100_000,
        "nested_braces_in_answer": "<think>x</think><answer>" + "{" * 100_000 + "</answer>",
        "whitespace_before_json": "<think>x</think><answer>" + " " * 100_000 + answer + "</answer>",
        "long_think": "<think>" + "a" * 100_000 + "</think><answer>" + answer + "</answer>",
        "many_empty_answers": "<answer></answer>" * 20_000,
    }


def parser_seconds(rounds: int, repeats: int) -> dict[str, float]:
    """Median seconds of ``parse_answer`` plus ``format_reward`` on each hostile completion."""
    times = {}
    for name, text in hostile_completions().items():
        per_round = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeats):
                parse_answer(text), format_reward(text)
            per_round.append((time.perf_counter() - start) / repeats)
        times[name] = statistics.median(per_round)
    return times


def generation_seconds(samples: int, rounds: int) -> dict[str, float]:
    """Median seconds a sample of each synthetic world takes to draw (a fresh dataset each round, nothing cached)."""
    times = {}
    for name in NAMES:
        load_dataset(name, "train", size=1)[0]  # warm-up: imports, caches of the drawing code
        per_round = []
        for round_ in range(rounds):
            dataset = load_dataset(name, "train", size=samples, seed=round_)
            start = time.perf_counter()
            for i in range(samples):
                dataset[i]
            per_round.append((time.perf_counter() - start) / samples)
        times[name] = statistics.median(per_round)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/cpu_parser_and_generation_speed.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parser-repeats", type=int, default=20, help="calls per round on each completion")
    parser.add_argument("--samples", type=int, default=40, help="samples per round of each world")
    args = parser.parse_args()
    load = os.getloadavg()[0]  # other work on the machine slows every number alike
    parse = parser_seconds(args.rounds, args.parser_repeats)
    generate = generation_seconds(args.samples, args.rounds)
    result = {
        "parser_seconds_per_completion": parse,
        "parser_seconds_all_six": sum(parse.values()),
        "generation_seconds_per_sample": generate,
        "rounds": args.rounds, "parser_repeats": args.parser_repeats, "samples_per_round": args.samples,
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "load_average_1min_at_start": load},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
