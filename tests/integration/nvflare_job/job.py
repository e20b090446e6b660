"""Build the test job with NVFlare's recipe API and export it as a JSON job folder.

``--path flarestream`` (default): flarestream's ``KafkaStreamer`` replaces
``ConvertToFedEvent`` on every client (``add_kafka_streaming``).
``--path nvflare``: NVFlare's own path, ``ConvertToFedEvent`` on the clients and
its TensorBoard receiver on the server (for the benchmark).

Sites listed in ``--external`` run the trainer as an external process (the Client
API's ``external_process`` mode), the others in process. The exported folder runs
with ``nvflare simulator <folder>/<name> -w <workspace> -n 3 -t 3``.
"""

from __future__ import annotations

import argparse
import os
import sys

from nvflare.app_common.np.recipes.fedavg import NumpyFedAvgRecipe
from nvflare.recipe import add_experiment_tracking
from nvflare.recipe.utils import set_per_site_config

HERE = os.path.dirname(os.path.abspath(__file__))


def build(args: argparse.Namespace) -> NumpyFedAvgRecipe:
    recipe = NumpyFedAvgRecipe(
        name=args.name,
        model=[[0.0, 0.0], [0.0, 0.0]],
        min_clients=len(args.sites),
        num_rounds=args.rounds,
        train_script=os.path.join(HERE, "train.py"),
        train_args=f"--scalars {args.scalars} --ledger {args.ledger}",
    )
    external = {
        "launch_external_process": True,
        "command": f"{sys.executable} -u",
    }
    set_per_site_config(
        recipe, {site: (external if site in args.external else {}) for site in args.sites}
    )
    if args.path == "flarestream":
        from flarestream.producer.nvflare import add_kafka_streaming

        add_kafka_streaming(recipe, bootstrap_servers=args.bootstrap, topic=args.topic)
    else:
        add_experiment_tracking(recipe, "tensorboard")
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--export-to", required=True)
    parser.add_argument("--name", default="flarestream_burst")
    parser.add_argument("--path", choices=("flarestream", "nvflare"), default="flarestream")
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--topic", default="flare.analytics")
    parser.add_argument("--sites", nargs="+", default=["site-1", "site-2", "site-3"])
    parser.add_argument("--external", nargs="*", default=[])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scalars", type=int, default=300)
    parser.add_argument("--ledger", required=True)
    args = parser.parse_args()
    build(args).export(args.export_to)


if __name__ == "__main__":
    main()
