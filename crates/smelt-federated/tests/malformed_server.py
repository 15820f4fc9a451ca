"""A hostile Flower server for smelt's client test: on the legacy FlowerService/Join stream it sends
instructions a client must refuse (wrong shapes, NaN, a wrong tensor type, bad config values) and
records the answers, then one message over the client's size limit. Uses Flower's own generated
gRPC classes (flwr 1.41).

    python malformed_server.py PORT OUT.json HUGE_BYTES [close]

With `close`, the server asks for parameters, then ends the stream mid-run without a goodbye and
stops listening.
"""
import io
import json
import sys
import threading
from concurrent import futures

import grpc
import numpy as np
from flwr.proto import transport_pb2 as pb
from flwr.proto import transport_pb2_grpc as rpc

port, out, huge = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
close = len(sys.argv) > 4 and sys.argv[4] == "close"
done = threading.Event()
answers = []


def npy(a):
    b = io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return b.getvalue()


def params(arrays, kind="numpy.ndarray"):
    return pb.Parameters(tensors=[npy(a) for a in arrays], tensor_type=kind)


def fit(arrays, config=None, kind="numpy.ndarray"):
    return pb.ServerMessage(fit_ins=pb.ServerMessage.FitIns(parameters=params(arrays, kind), config=config or {}))


class Hostile(rpc.FlowerServiceServicer):
    def Join(self, request_iterator, context):
        w, b = np.zeros((3, 8), np.float32), np.zeros(3, np.float32)
        nan = w.copy()
        nan[1, 2] = np.nan
        steps = [
            ("get_parameters", pb.ServerMessage(get_parameters_ins=pb.ServerMessage.GetParametersIns())),
            ("wrong_shape", fit([np.zeros((3, 9), np.float32), b])),
            ("nan", fit([nan, b])),
            ("int_dtype", fit([w.astype(np.int32), b])),
            ("one_tensor", fit([w])),
            ("wrong_type", fit([w, b], kind="bytes")),
            ("huge_norm", fit([w + 1e5, b])),
            ("bad_config", fit([w, b], {"local_epochs": pb.Scalar(string="three")})),
            ("good_fit", fit([w, b], {"local_epochs": pb.Scalar(sint64=1), "who_knows": pb.Scalar(bool=True)})),
            ("evaluate_nan", pb.ServerMessage(evaluate_ins=pb.ServerMessage.EvaluateIns(parameters=params([nan, b])))),
            # float64 arrays are read too (converted to float32).
            ("good_evaluate", pb.ServerMessage(evaluate_ins=pb.ServerMessage.EvaluateIns(parameters=params([w.astype(np.float64), b.astype(np.float64)])))),
        ]
        if close:
            steps = steps[:1]
        for name, msg in steps:
            yield msg
            res = next(request_iterator)
            kind = res.WhichOneof("msg")
            inner = getattr(res, kind)
            status = inner.status if kind != "disconnect_res" else None
            answers.append({"step": name, "kind": kind, "code": status.code if status else None, "message": status.message if status else "",
                            "tensors": len(inner.parameters.tensors) if kind in ("fit_res", "get_parameters_res") else 0})
        with open(out, "w") as f:
            json.dump(answers, f)
        if close:
            done.set()
            return
        # Over the client's limit: its stream must end cleanly (the server stops when it does).
        context.add_callback(done.set)
        yield pb.ServerMessage(fit_ins=pb.ServerMessage.FitIns(parameters=pb.Parameters(tensors=[b"\0" * huge], tensor_type="numpy.ndarray")))
        for _ in request_iterator:
            pass


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
rpc.add_FlowerServiceServicer_to_server(Hostile(), server)
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
done.wait(120)
server.stop(1)
