"""Drives Sovra's /storage/v1/s3 with boto3, as an application would.

Usage: boto3_client.py ENDPOINT ACCESS_KEY SECRET_KEY PROJECT_REF ANON_KEY USER_ID USER_TOKEN
Prints one JSON line: {"ok": true, "presigned": URL} (assertions fail loudly).
"""

import io
import json
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from boto3.s3.transfer import TransferConfig

endpoint, access, secret, project_ref, anon, user_id, user_token = sys.argv[1:8]
config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})


def client(**credentials):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="local", config=config, **credentials
    )


s3 = client(aws_access_key_id=access, aws_secret_access_key=secret)

s3.create_bucket(Bucket="boto")
assert "boto" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
s3.head_bucket(Bucket="boto")

# Single upload, ranged download, metadata.
s3.put_object(
    Bucket="boto",
    Key="dir/hello.txt",
    Body=b"hello boto",
    ContentType="text/plain",
    Metadata={"colour": "blue"},
)
got = s3.get_object(Bucket="boto", Key="dir/hello.txt", Range="bytes=6-9")
assert got["Body"].read() == b"boto", got
head = s3.head_object(Bucket="boto", Key="dir/hello.txt")
assert head["ContentLength"] == 10, head
assert head["Metadata"] == {"colour": "blue"}, head
assert head["ContentType"] == "text/plain", head

# Listing with a delimiter, and paging.
for key in ["dir/sub/a.txt", "top.txt"]:
    s3.put_object(Bucket="boto", Key=key, Body=b"x")
listed = s3.list_objects_v2(Bucket="boto", Prefix="dir/", Delimiter="/")
assert [o["Key"] for o in listed["Contents"]] == ["dir/hello.txt"], listed
assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["dir/sub/"], listed
pages = s3.get_paginator("list_objects_v2").paginate(
    Bucket="boto", PaginationConfig={"PageSize": 1}
)
keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
assert keys == ["dir/hello.txt", "dir/sub/a.txt", "top.txt"], keys

# Copy.
s3.copy_object(
    Bucket="boto", Key="copy.txt", CopySource={"Bucket": "boto", "Key": "dir/hello.txt"}
)
assert s3.get_object(Bucket="boto", Key="copy.txt")["Body"].read() == b"hello boto"

# Multipart upload (three parts of 5 MiB, 5 MiB and 1 MiB) and download.
data = bytes(i % 251 for i in range(11 * 1024 * 1024))
transfer = TransferConfig(
    multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
)
s3.upload_fileobj(io.BytesIO(data), "boto", "big.bin", Config=transfer)
out = io.BytesIO()
s3.download_fileobj("boto", "big.bin", out, Config=transfer)
assert out.getvalue() == data, len(out.getvalue())
# An aborted multipart upload is gone.
upload = s3.create_multipart_upload(Bucket="boto", Key="aborted.bin")
s3.upload_part(
    Bucket="boto", Key="aborted.bin", PartNumber=1, UploadId=upload["UploadId"], Body=b"x"
)
assert len(s3.list_multipart_uploads(Bucket="boto").get("Uploads", [])) == 1
s3.abort_multipart_upload(Bucket="boto", Key="aborted.bin", UploadId=upload["UploadId"])
assert s3.list_multipart_uploads(Bucket="boto").get("Uploads", []) == []

presigned = s3.generate_presigned_url(
    "get_object", Params={"Bucket": "boto", "Key": "dir/hello.txt"}, ExpiresIn=300
)

# Errors.
try:
    s3.get_object(Bucket="boto", Key="missing")
    raise AssertionError("missing object read")
except ClientError as err:
    assert err.response["Error"]["Code"] == "NoSuchKey", err.response
wrong = client(aws_access_key_id=access, aws_secret_access_key=secret + "x")
try:
    wrong.list_buckets()
    raise AssertionError("wrong secret accepted")
except ClientError as err:
    assert err.response["Error"]["Code"] == "SignatureDoesNotMatch", err.response

# A session token: the user, under RLS.
user = client(
    aws_access_key_id=project_ref,
    aws_secret_access_key=anon,
    aws_session_token=user_token,
)
user.put_object(Bucket="private", Key=f"{user_id}/mine.txt", Body=b"mine")
assert user.get_object(Bucket="private", Key=f"{user_id}/mine.txt")["Body"].read() == b"mine"
try:
    user.put_object(Bucket="private", Key="someone-else/x.txt", Body=b"x")
    raise AssertionError("RLS did not refuse")
except ClientError as err:
    assert err.response["Error"]["Code"] == "AccessDenied", err.response
try:
    user.get_object(Bucket="boto", Key="dir/hello.txt")
    raise AssertionError("RLS did not hide")
except ClientError as err:
    assert err.response["Error"]["Code"] == "NoSuchKey", err.response

# Deleting.
deleted = s3.delete_objects(
    Bucket="boto",
    Delete={"Objects": [{"Key": k} for k in ["dir/sub/a.txt", "top.txt", "copy.txt"]]},
)
assert len(deleted["Deleted"]) == 3, deleted
s3.delete_object(Bucket="boto", Key="big.bin")

print(json.dumps({"ok": True, "presigned": presigned}))
