-- wrk: POST a small chat completion request with an API key and attribution headers.
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello"}],"max_tokens":50}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"
wrk.headers["X-ModelTrack-Team"] = "bench"
wrk.headers["X-ModelTrack-App"] = "wrk"
