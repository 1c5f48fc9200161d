"""What the benchmarks run besides the product: wrk scripts, the bare aiohttp handler and
its locustfile, a stand-in web node and a cheap websocket client. Tests may use these."""
