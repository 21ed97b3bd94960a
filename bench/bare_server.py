"""The baseline for the poll benchmark: a bare aiohttp handler answering with a fixed JSON body.

    python bench/bare_server.py PORT BODY_FILE STATUS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    port, body_file, status = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    body = json.loads(body_file.read_text())
    headers = {"Location": f"/job/{body['id']}", "Retry-After": "2"} if status == 202 else None

    async def job(request: web.Request) -> web.Response:
        # Encodes the body on every request, as a real handler would.
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_get("/job/{job_id}", job)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
