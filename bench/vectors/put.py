#!/usr/bin/env python3
"""PUTs every put_*.json of a directory through Sovra's PutVectors with
CONC concurrent clients; prints vectors/s.

  put.py URL APIKEY SERVICE_KEY DIR CONC
"""
import concurrent.futures
import glob
import sys
import time
import urllib.request

url, apikey, service, directory, conc = sys.argv[1:6]
files = sorted(glob.glob(f"{directory}/put_*.json"))


def send(path):
    body = open(path, "rb").read()
    req = urllib.request.Request(f"{url}/storage/v1/vector/PutVectors", data=body, method="POST",
                                 headers={"apikey": apikey, "Authorization": f"Bearer {service}",
                                          "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=600).read()
    return body.count(b'"key"')


start = time.monotonic()
with concurrent.futures.ThreadPoolExecutor(int(conc)) as pool:
    n = sum(pool.map(send, files))
print(f"{n / (time.monotonic() - start):.0f}")
