#!/usr/bin/env python3
"""recall@10 of QueryVectors through Sovra against exact search.

  recall.py URL APIKEY SERVICE_KEY QUERIES_JSON EXACT_TSV

EXACT_TSV has one line per query: the keys of the exact 10 nearest,
space-separated (bench/vectors.sh gets them from PostgreSQL with index scans
off). Prints the recall.
"""
import json
import sys
import urllib.request

url, apikey, service, queries_path, exact_path = sys.argv[1:6]
queries = json.load(open(queries_path))
exact = [line.split() for line in open(exact_path) if line.strip()]
hits = total = 0
for q, truth in zip(queries, exact):
    body = json.dumps({"vectorBucketName": "bench", "indexName": "api",
                       "queryVector": {"float32": q}, "topK": 10}).encode()
    req = urllib.request.Request(f"{url}/storage/v1/vector/QueryVectors", data=body, method="POST",
                                 headers={"apikey": apikey, "Authorization": f"Bearer {service}",
                                          "Content-Type": "application/json"})
    got = {v["key"] for v in json.load(urllib.request.urlopen(req))["vectors"]}
    hits += len(got & set(truth))
    total += len(truth)
print(f"{hits / total:.4f}")
