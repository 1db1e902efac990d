"""ClientApp of the tiny app: adds the node's partition id + 1 to every weight."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One 'training' step: w <- w + (partition-id + 1)."""
    weights = msg.content.array_records["arrays"].to_numpy_ndarrays()
    step = float(context.node_config.get("partition-id", 0)) + 1.0
    updated = [w + step for w in weights]
    metrics = MetricRecord({"step": step, "num-examples": 1})
    return Message(RecordDict({"arrays": ArrayRecord(updated), "metrics": metrics}), reply_to=msg)
