"""An NVFlare Client API trainer that logs a burst of analytics each round.

Runs inside NVFlare (in process or as an external process). Each round it logs
``--scalars`` scalars through NVFlare's ``SummaryWriter`` (steps continue across
rounds) and a handful of ``MLflowWriter`` calls (metric, metrics, params, tags,
text), then returns the model plus one. Every call it made is appended to
``<ledger>/<site>.jsonl`` once the round's calls are done, with the round's start
and end times, so a test can check that each record reached the sinks. Values
depend only on (site, round, index).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.client.tracking import MLflowWriter, SummaryWriter


def scalar_value(site: str, step: int) -> float:
    return int(site.rsplit("-", 1)[-1]) * 1000 + step * 0.25


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scalars", type=int, default=300)
    parser.add_argument("--ledger", required=True)
    args = parser.parse_args()

    flare.init()
    site = flare.get_site_name()
    tb, mlflow = SummaryWriter(), MLflowWriter()
    os.makedirs(args.ledger, exist_ok=True)
    ledger_path = os.path.join(args.ledger, f"{site}.jsonl")
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        rnd = model.current_round or 0
        calls: list[dict[str, object]] = []
        start = time.time()
        for i in range(args.scalars):
            step = rnd * args.scalars + i
            value = scalar_value(site, step)
            tb.add_scalar("train/loss", value, global_step=step)
            calls.append({"call": "add_scalar", "tag": "train/loss", "value": value, "step": step})
        tb.add_scalars("train/acc", {"top1": rnd + 0.5, "top5": rnd + 0.75}, global_step=rnd)
        calls.append(
            {"call": "add_scalars", "tag": "train/acc", "step": rnd,
             "value": {"top1": rnd + 0.5, "top5": rnd + 0.75}}
        )  # fmt: skip
        mlflow.log_metric("val_loss", 1.0 / (rnd + 1), step=rnd)
        calls.append(
            {"call": "log_metric", "tag": "val_loss", "value": 1.0 / (rnd + 1), "step": rnd}
        )
        mlflow.log_metrics({"precision": 0.5 + rnd / 10, "recall": 0.25 + rnd / 10}, step=rnd)
        calls.append(
            {"call": "log_metrics", "tag": "metrics", "step": rnd,
             "value": {"precision": 0.5 + rnd / 10, "recall": 0.25 + rnd / 10}}
        )  # fmt: skip
        mlflow.set_tag(f"round_{rnd}", "done")
        calls.append({"call": "set_tag", "tag": f"round_{rnd}", "value": "done"})
        mlflow.log_text(f"{site} finished round {rnd}", f"notes/round-{rnd}.txt")
        calls.append(
            {"call": "log_text", "tag": "text", "path": f"notes/round-{rnd}.txt",
             "value": f"{site} finished round {rnd}"}
        )  # fmt: skip
        if rnd == 0:
            mlflow.log_params({"lr": 0.01, "optimizer": "sgd"})
            calls.append(
                {"call": "log_params", "tag": "params", "value": {"lr": 0.01, "optimizer": "sgd"}}
            )
            mlflow.set_tags({"framework": "numpy", "site_kind": "test"})
            calls.append(
                {
                    "call": "set_tags",
                    "tag": "tags",
                    "value": {"framework": "numpy", "site_kind": "test"},
                }
            )
        calls.append({"call": "timing", "start": start, "end": time.time()})
        with open(ledger_path, "a", encoding="utf-8") as ledger:
            for call in calls:
                ledger.write(json.dumps({"site": site, "round": rnd, **call}) + "\n")
        params = {k: v + 1 for k, v in (model.params or {}).items()}
        flare.send(FLModel(params=params, metrics={"accuracy": 0.5 + rnd / 10}))


if __name__ == "__main__":
    main()
