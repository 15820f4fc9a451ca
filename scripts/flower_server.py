#!/usr/bin/env python3
"""A plain Flower 1.41 server on the legacy gRPC stream (`flwr.server.start_server`), for smelt's
federated tests and benchmarks. It uses Flower's own strategies unchanged and records, per round,
the aggregated parameters and what each client sent, then the History, as JSON.

    python scripts/flower_server.py --address 127.0.0.1:8080 --clients 2 --rounds 1 --out run.json

Needs `flwr==1.41.0` (scripts/test installs it into $SMELT_HOME/flwr-venv).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import flwr as fl
from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum


def weighted(metrics):
    """Example-weighted mean of each metric the clients report."""
    total = sum(n for n, _ in metrics)
    keys = sorted({k for _, m in metrics for k in m})
    return {k: sum(n * m[k] for n, m in metrics if k in m) / max(total, 1) for k in keys}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default="127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=2, help="clients needed before a round starts (all of them fit and evaluate)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox", "fedmedian", "trimmed", "krum"])
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--proximal-mu", type=float, default=0.1, help="FedProx's mu (fedprox only)")
    ap.add_argument("--malicious", type=int, default=0, help="clients Krum assumes malicious")
    ap.add_argument("--krum-keep", type=int, default=0, help="Multi-Krum: average this many best-scored updates (0: plain Krum keeps one)")
    ap.add_argument("--bucket", type=int, default=0, help="bucketing (Karimireddy, He and Jaggi, ICLR 2022): each round, shuffle the results, average them in groups of this many (example-weighted), and give the robust strategy the group means (0 or 1: off)")
    ap.add_argument("--extra-config", default="{}", help="JSON object added to every fit config (tests send unknown keys)")
    ap.add_argument("--dp-clip", type=float, default=0.0, help="wrap the strategy in Flower's DifferentialPrivacyServerSideFixedClipping with this clipping norm")
    ap.add_argument("--dp-noise", type=float, default=0.0)
    ap.add_argument("--round-timeout", type=float, default=600.0)
    ap.add_argument("--certificates", nargs=3, metavar=("CA", "CERT", "KEY"), help="serve over TLS with these PEM files (root CA, server certificate, server key)")
    ap.add_argument("--record-values", type=int, default=0, help="record only each tensor's shape and its first N values, flattened (0: every tensor whole, as nested lists)")
    ap.add_argument("--out", required=True, help="JSON file for the record")
    a = ap.parse_args()

    extra = json.loads(a.extra_config)
    rounds = []

    def fit_config(server_round):
        cfg = {"server_round": server_round, "local_epochs": a.local_epochs, "batch_size": a.batch_size}
        cfg.update(extra)
        return cfg

    common = dict(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=a.clients,
        min_evaluate_clients=a.clients,
        min_available_clients=a.clients,
        on_fit_config_fn=fit_config,
        on_evaluate_config_fn=lambda r: {"server_round": r},
        fit_metrics_aggregation_fn=weighted,
        evaluate_metrics_aggregation_fn=weighted,
    )
    base = {
        "fedavg": lambda: FedAvg,
        "fedprox": lambda: FedProx,
        "fedmedian": lambda: FedMedian,
        "trimmed": lambda: FedTrimmedAvg,
        "krum": lambda: Krum,
    }[a.strategy]()
    if a.strategy == "fedprox":
        common["proximal_mu"] = a.proximal_mu
    if a.strategy == "krum":
        common["num_malicious_clients"] = a.malicious
        common["num_clients_to_keep"] = a.krum_keep

    def recorded(arrays):
        if a.record_values <= 0:
            return [x.tolist() for x in arrays]
        return [{"shape": list(x.shape), "values": x.ravel()[:a.record_values].tolist()} for x in arrays]

    def buckets(server_round, results):
        """The results shuffled (seeded by the round) and averaged in groups of --bucket."""
        if a.bucket <= 1 or len(results) <= 1:
            return results
        order = np.random.default_rng(1000 + server_round).permutation(len(results))
        merged = []
        for start in range(0, len(order), a.bucket):
            group = [results[i] for i in order[start:start + a.bucket]]
            n = sum(r.num_examples for _, r in group)
            arrays = [parameters_to_ndarrays(r.parameters) for _, r in group]
            mean = [sum(r.num_examples * x[k] for (_, r), x in zip(group, arrays)) / n for k in range(len(arrays[0]))]
            first = group[0][1]
            fit = FitRes(status=first.status, parameters=ndarrays_to_parameters(mean), num_examples=n, metrics=first.metrics)
            merged.append((group[0][0], fit))
        return merged

    class Recording(base):
        def aggregate_fit(self, server_round, results, failures):
            params, metrics = super().aggregate_fit(server_round, buckets(server_round, results), failures)
            rounds.append({
                "round": server_round,
                "failures": len(failures),
                "clients": [
                    {"num_examples": r.num_examples, "metrics": dict(r.metrics),
                     "parameters": recorded(parameters_to_ndarrays(r.parameters))}
                    for _, r in results
                ],
                "aggregated": None if params is None else recorded(parameters_to_ndarrays(params)),
            })
            return params, metrics

        def aggregate_evaluate(self, server_round, results, failures):
            out = super().aggregate_evaluate(server_round, results, failures)
            for r in rounds:
                if r["round"] == server_round:
                    r["evaluate_failures"] = len(failures)
            return out

    strategy = Recording(**common)
    if a.dp_clip > 0:
        from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping
        strategy = DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=a.dp_noise, clipping_norm=a.dp_clip, num_sampled_clients=a.clients)

    started = time.time()
    hist = fl.server.start_server(
        server_address=a.address,
        config=fl.server.ServerConfig(num_rounds=a.rounds, round_timeout=a.round_timeout),
        strategy=strategy,
        certificates=tuple(open(p, "rb").read() for p in a.certificates) if a.certificates else None,
    )
    finite = lambda v: v if isinstance(v, (int, str)) or (isinstance(v, float) and math.isfinite(v)) else None
    record = {
        "strategy": a.strategy,
        "seconds": time.time() - started,
        "rounds": rounds,
        "history": {
            "losses_distributed": [[r, finite(l)] for r, l in hist.losses_distributed],
            "metrics_distributed_fit": {k: [[r, finite(v)] for r, v in vs] for k, vs in hist.metrics_distributed_fit.items()},
            "metrics_distributed": {k: [[r, finite(v)] for r, v in vs] for k, vs in hist.metrics_distributed.items()},
        },
    }
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    sys.exit(main())
