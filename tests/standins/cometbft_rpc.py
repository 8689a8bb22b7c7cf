#!/usr/bin/env python3
"""CometBFT RPC stand-in for the guard's tests (issue 22): a model of the read-only RPC
of CometBFT v0.38 and v1.0 as far as the guard reads it, served from a scripted chain.

Usage: cometbft_rpc.py CHAIN_FILE PORT_FILE
  Listens on 127.0.0.1 (a free port, written to PORT_FILE once listening) and answers
  every request from CHAIN_FILE, re-read on each request (a test rewrites it to move the
  chain on). Standard library only.

Behaviours modelled, each with its source (cometbft/cometbft, read with `fetch`):
- JSON-RPC over HTTP GET (URI parameters), `{"jsonrpc":"2.0","id":-1,"result":...}`; a
  method's error is `{"error":{"code":-32603,"message":"Internal error","data":"<text>"}}`
  with HTTP 500 (rpc/jsonrpc/server/http_uri_handler.go `makeHTTPHandler`: the id is always
  -1, `RPCInternalError` written with `http.StatusInternalServerError`).
- Paths: unprefixed in v0.38; v1.0 serves `/v1/<method>` as well as the unprefixed ones,
  which "will be dropped in future releases" (rpc/openapi/openapi.yaml@v1.0.1 `info`;
  CHANGELOG #1412). `"v1_only": true` answers 404 on the unprefixed paths.
- `/status`: `node_info.network` (the chain id) and `sync_info.{latest_block_height,
  latest_block_time, earliest_block_height, catching_up}`; heights as JSON strings,
  `catching_up` a JSON bool, times RFC 3339 with nanoseconds (openapi.yaml, rpc/core/status.go).
- `/commit?height=H`: `signed_header.commit.{height, signatures[]}` and `canonical`; at the
  store's tip the node's own seen commit with `canonical:false`, below it the commit stored
  with block H+1, `canonical:true` (rpc/core/blocks.go@v0.38.25 `Commit`).
- A signature is `{block_id_flag, validator_address, timestamp, signature}`: flag 1 ABSENT
  (empty address, zero time, null signature; types/block.go `CommitSig.ValidateBasic`),
  2 COMMIT, 3 NIL; the flag is a JSON integer (openapi.yaml `BlockIDFlag`).
- Heights outside the store answer errors, never an empty result: below the base
  "height H is not available, lowest height is B", above the tip "height H must be less
  than or equal to the current blockchain height T" (rpc/core/env.go@v0.38.25 `getHeight`).
- `/validators?height=H&page=P&per_page=N`: `{block_height, validators:[{address, ...}],
  count, total}`, at most 100 per page (rpc/core/consensus.go `Validators`).

Ledger mode (the chaos test): with `"ledger": {"path", "address", "epoch_ms", "block_ms"}`
the chain is the chaos harness's: the tip is the chain clock's current height (height h
begins at epoch + (h-1)*block, as tests/standins/node_sign.rs counts), the tip's time is
when it began, and the commit for h holds one COMMIT of `address` for each ledger line of
height h (every signer there signs with the validator's one key), timestamped as the line.

Scripted faults (the chain file): `"hang": true` accepts and never answers; `"catching_up"`,
a stale `"tip_time_ms"`, another `"chain_id"`, a higher `"earliest"` (pruned), a
`"validators"` list without our address, explicit `"signatures"` per height (ours, NIL,
a rogue's), an endpoint that lies alone (a test gives it signatures the others do not have).

Simplifications, none of which the guard can tell apart from a real node:
- no blocks, headers, hashes or signature bytes: the guard reads flags, addresses and
  times only (it does not verify signatures: the endpoints are the operator's own);
- heights without explicit signatures carry one COMMIT of a fixed other validator and one
  ABSENT entry; `/validators` lists the chain file's addresses with fixed power;
- `/block`, `/consensus_state` and every other method answer 404;
- one chain file per endpoint; the time of a block is whatever the file says.
"""

import json
import os
import socket
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

OTHER = "0000000000000000000000000000000000000001"
ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(ms):
    secs, rem = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%03d000000Z" % rem


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    chain_file = None

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # http.server writes the headers and the body in two sends; with Nagle's algorithm
        # and the client's delayed ACK each answer would wait tens of ms, a cost of this
        # stand-in that Go's net/http (CometBFT's server) does not have.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def chain(self):
        with open(self.chain_file) as f:
            c = json.load(f)
        led = c.get("ledger")
        if led:
            now = int(time.time() * 1000)
            tip = max(1, (now - led["epoch_ms"]) // led["block_ms"] + 1)
            c["tip"] = tip
            c["tip_time_ms"] = led["epoch_ms"] + (tip - 1) * led["block_ms"]
            sigs = {}
            try:
                with open(led["path"]) as f:
                    for line in f:
                        try:
                            e = json.loads(line)
                        except ValueError:
                            continue
                        sigs.setdefault(str(e["height"]), []).append(
                            {"flag": 2, "address": led["address"], "time_ms": e["unix_us"] // 1000})
            except FileNotFoundError:
                pass
            c["signatures"] = {h: v + [{"flag": 1}] for h, v in sigs.items()}
        return c

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def result(self, r):
        self.reply(200, {"jsonrpc": "2.0", "id": -1, "result": r})

    def error(self, text):
        self.reply(500, {"jsonrpc": "2.0", "id": -1,
                         "error": {"code": -32603, "message": "Internal error", "data": text}})

    def do_GET(self):
        c = self.chain()
        if c.get("hang"):
            time.sleep(3600)
            return
        url = urlparse(self.path)
        path = url.path
        if path.startswith("/v1/"):
            path = path[3:]
        elif c.get("v1_only"):
            self.reply(404, {})
            return
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if path == "/status":
            self.status(c)
        elif path == "/commit":
            self.commit(c, q)
        elif path == "/validators":
            self.validators(c, q)
        else:
            self.reply(404, {})

    def status(self, c):
        self.result({
            "node_info": {"network": c["chain_id"], "version": "0.38.17"},
            "sync_info": {
                "latest_block_height": str(c["tip"]),
                "latest_block_time": rfc3339(c["tip_time_ms"]),
                "earliest_block_height": str(c.get("earliest", 1)),
                "catching_up": bool(c.get("catching_up", False)),
            },
        })

    def height(self, c, q):
        tip, base = c["tip"], c.get("earliest", 1)
        h = int(q.get("height", tip))
        if h < base:
            self.error("height %d is not available, lowest height is %d" % (h, base))
            return None
        if h > tip:
            self.error("height %d must be less than or equal to the current blockchain height %d" % (h, tip))
            return None
        return h

    def commit(self, c, q):
        h = self.height(c, q)
        if h is None:
            return
        sigs = c.get("signatures", {}).get(str(h))
        if sigs is None:
            sigs = [{"flag": 2, "address": OTHER, "time_ms": c["tip_time_ms"]}, {"flag": 1}]
        out = []
        for s in sigs:
            if s["flag"] == 1:
                out.append({"block_id_flag": 1, "validator_address": "",
                            "timestamp": ZERO_TIME, "signature": None})
            else:
                out.append({"block_id_flag": s["flag"], "validator_address": s["address"],
                            "timestamp": rfc3339(s["time_ms"]), "signature": "c2lnbmF0dXJl"})
        self.result({
            "signed_header": {"header": {"chain_id": c["chain_id"], "height": str(h)},
                              "commit": {"height": str(h), "round": 0, "signatures": out}},
            "canonical": h < c["tip"],
        })

    def validators(self, c, q):
        h = self.height(c, q)
        if h is None:
            return
        vals = c.get("validators", [OTHER])
        per = min(int(q.get("per_page", 30)), 100)
        page = int(q.get("page", 1))
        chunk = vals[(page - 1) * per: page * per]
        self.result({"block_height": str(h),
                     "validators": [{"address": a, "voting_power": "10", "proposer_priority": "0"}
                                    for a in chunk],
                     "count": str(len(chunk)), "total": str(len(vals))})


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


def main():
    chain_file, port_file = sys.argv[1], sys.argv[2]
    Handler.chain_file = chain_file
    srv = Server(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
