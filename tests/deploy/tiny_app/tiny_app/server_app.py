"""ServerApp of the tiny app: FedAvg for num-server-rounds rounds, writes what happened to result-path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg over every connected node and record rounds, nodes and the final model."""
    num_rounds = int(context.run_config["num-server-rounds"])
    # No evaluation rounds: each one would cost the test another ClientApp start on every node.
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=2)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(4)]), num_rounds=num_rounds)
    final = result.arrays.to_numpy_ndarrays()[0]
    record = {
        "num_rounds": num_rounds,
        "train_metrics": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
        "node_ids": sorted(grid.get_node_ids()),
        "final_model": final.tolist(),
    }
    if path := str(context.run_config.get("result-path", "")):
        Path(path).write_text(json.dumps(record), encoding="utf-8")
