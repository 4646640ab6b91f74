-- wrk script of the proxy benchmark: the gateway's validated route, one tracking-link update per
-- request. The Authorization header comes from BENCH_AUTH (set per target by benches/proxy.py).
wrk.method = "PUT"
wrk.path = "/api/fansly/fansly_acct_bench/tracking-links/100000000000000003"
wrk.body = '{"label":"Twitter bio (updated)","description":"Updated description."}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTH") or ""
