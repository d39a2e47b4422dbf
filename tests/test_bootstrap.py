"""State backend bootstrap against the real S3 and KMS APIs (a moto server on loopback).

The server runs with an explicit environment (test credentials, none of the caller's CA
bundles or AWS settings); the clients here are built the same way, so the tests do not
depend on who runs them.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from fleet.bootstrap import (
    ABORT_INCOMPLETE_UPLOAD_DAYS,
    NONCURRENT_VERSION_DAYS,
    BootstrapInputError,
    BootstrapResult,
    bootstrap,
    login_lines,
)
from fleet.private_bucket import tls_only_policy
from lab import supervisor

MOTO = Path(sys.executable).with_name("moto_server")
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "eu-west-1"
# What the caller's environment could hold that would change how boto3 talks to the server.
_CALLER_ENV = (
    "AWS_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KMS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("moto")
    with pytest.MonkeyPatch.context() as env:
        for name in _CALLER_ENV:
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", str(state / "no-config"))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(state / "no-credentials"))
        port = supervisor.free_port()
        svc = supervisor.Service(
            "moto",
            [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
            str(state / "moto.log"),
            {"http": port},
            env=supervisor.clean_env({**CREDS, "AWS_DEFAULT_REGION": "us-east-1"}),
        )
        supervisor.start(svc, cwd=state)
        try:
            supervisor.wait_ready(svc, lambda: supervisor.port_open(port), timeout=30)
            yield f"http://127.0.0.1:{port}"
        finally:
            supervisor.stop(svc)


Clients = Callable[..., tuple[Any, Any]]


@pytest.fixture
def clients(endpoint: str) -> Clients:
    """(s3, kms) for a region, as the default account or with other credentials."""

    def make(region: str = REGION, **creds: str) -> tuple[Any, Any]:
        session = boto3.session.Session(
            aws_access_key_id=creds.get("AccessKeyId", CREDS["AWS_ACCESS_KEY_ID"]),
            aws_secret_access_key=creds.get("SecretAccessKey", CREDS["AWS_SECRET_ACCESS_KEY"]),
            aws_session_token=creds.get("SessionToken"),
            region_name=region,
        )
        return session.client("s3", endpoint_url=endpoint), session.client("kms", endpoint_url=endpoint)

    return make


def code(err: pytest.ExceptionInfo[ClientError]) -> str:
    return str(err.value.response["Error"]["Code"])


# --- first run, second run --------------------------------------------------------------


def test_first_run_creates_everything_as_asked(clients: Clients) -> None:
    s3, kms = clients()
    result = bootstrap("acme-state-first", REGION, s3, kms)

    assert result.weaker == [] and result.unchanged == []
    assert result.bucket == "acme-state-first" and result.alias == "alias/acme-state-first-secrets"
    assert result.created == [
        "kms key alias/acme-state-first-secrets: symmetric, automatic rotation on",
        f"bucket acme-state-first in {REGION}",
        "versioning: Enabled",
        "encryption: SSE-KMS with alias/acme-state-first-secrets, bucket key enabled",
        "public access block: all four flags on",
        "object ownership: BucketOwnerEnforced (ACLs disabled)",
        "bucket policy: denies every request without TLS (aws:SecureTransport=false)",
        "lifecycle: noncurrent versions expire after 90 days, incomplete multipart uploads are aborted after 7 days",
    ]

    # Read every setting back through the API.
    bucket = "acme-state-first"
    assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == REGION
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": result.key_arn}
    assert rule["BucketKeyEnabled"] is True
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"] == [
        {"ObjectOwnership": "BucketOwnerEnforced"}
    ]
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert policy == tls_only_policy(bucket, REGION)
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    (lifecycle,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle["Status"] == "Enabled" and lifecycle["Filter"] == {"Prefix": ""}
    assert lifecycle["NoncurrentVersionExpiration"]["NoncurrentDays"] == NONCURRENT_VERSION_DAYS == 90
    assert lifecycle["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == ABORT_INCOMPLETE_UPLOAD_DAYS == 7

    key = kms.describe_key(KeyId="alias/acme-state-first-secrets")["KeyMetadata"]
    assert key["Arn"] == result.key_arn and f":{REGION}:" in key["Arn"]
    assert key["KeySpec"] == "SYMMETRIC_DEFAULT" and key["KeyState"] == "Enabled"
    assert key["KeyManager"] == "CUSTOMER"
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    # The key works as a secrets provider would use it.
    blob = kms.encrypt(KeyId="alias/acme-state-first-secrets", Plaintext=b"stack secret")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"stack secret"


def test_second_run_changes_nothing_and_says_so(clients: Clients) -> None:
    s3, kms = clients()
    first = bootstrap("acme-state-again", REGION, s3, kms)
    keys_before = len(kms.list_keys()["Keys"])
    policy_before = s3.get_bucket_policy(Bucket="acme-state-again")["Policy"]

    second = bootstrap("acme-state-again", REGION, s3, kms)

    assert second.created == [] and second.weaker == []
    assert second.unchanged == first.created  # every item, in the same order
    assert second.key_arn == first.key_arn
    assert len(kms.list_keys()["Keys"]) == keys_before
    assert s3.get_bucket_policy(Bucket="acme-state-again")["Policy"] == policy_before


def test_first_run_in_us_east_1(clients: Clients) -> None:
    """us-east-1 takes no location constraint; the bucket still lands in the asked region."""
    s3, kms = clients("us-east-1")
    result = bootstrap("acme-state-virginia", "us-east-1", s3, kms)
    assert result.weaker == [] and "bucket acme-state-virginia in us-east-1" in result.created
    assert s3.get_bucket_location(Bucket="acme-state-virginia")["LocationConstraint"] in (None, "")
    assert ":us-east-1:" in result.key_arn
    assert bootstrap("acme-state-virginia", "us-east-1", s3, kms).created == []


# --- weak buckets are reported, never changed -------------------------------------------


def test_weak_bucket_is_reported_and_left_unchanged(clients: Clients) -> None:
    s3, kms = clients()
    bucket = "acme-state-weak"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": False,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )

    result = bootstrap(bucket, REGION, s3, kms)

    assert result.created == []
    assert result.weaker == [
        "versioning: Suspended, not Enabled (an overwritten or deleted state file could not be recovered)",
        "encryption: no default encryption, not SSE-KMS",
        "public access block: IgnorePublicAcls off (all four flags should be on)",
        "object ownership: not set, not BucketOwnerEnforced (ACLs still apply)",
        "bucket policy: no bucket policy denies requests without TLS (aws:SecureTransport=false)",
        "lifecycle: no rule expires noncurrent versions (old state versions pile up forever)",
        "lifecycle: no rule aborts incomplete multipart uploads (their parts are billed forever)",
    ]
    assert result.unchanged == [f"bucket {bucket} in {REGION}"]

    # Still weak, as it was: nothing was applied, not even half.
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    with pytest.raises(ClientError) as err:
        s3.get_bucket_encryption(Bucket=bucket)
    assert code(err) == "ServerSideEncryptionConfigurationNotFoundError"
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]["IgnorePublicAcls"] is False
    for read, missing in (
        (s3.get_bucket_policy, "NoSuchBucketPolicy"),
        (s3.get_bucket_lifecycle_configuration, "NoSuchLifecycleConfiguration"),
    ):
        with pytest.raises(ClientError) as err:
            read(Bucket=bucket)
        assert code(err) == missing
    # Nor was the secrets key created on the side.
    with pytest.raises(ClientError) as err:
        kms.describe_key(KeyId=f"alias/{bucket}-secrets")
    assert code(err) == "NotFoundException"
    assert result.key_arn == ""


def _suspend_versioning(s3: Any, kms: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})


def _sse_s3(s3: Any, kms: Any, bucket: str) -> None:
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )


def _no_bucket_key(s3: Any, kms: Any, bucket: str) -> None:
    key = kms.describe_key(KeyId=f"alias/{bucket}-secrets")["KeyMetadata"]["Arn"]
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key},
                    "BucketKeyEnabled": False,
                }
            ]
        },
    )


def _public_policy_allowed(s3: Any, kms: Any, bucket: str) -> None:
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": False,
            "RestrictPublicBuckets": False,
        },
    )


def _acls_back(s3: Any, kms: Any, bucket: str) -> None:
    s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "ObjectWriter"}]})


def _policy_without_tls_rule(s3: Any, kms: Any, bucket: str) -> None:
    statement = {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteBucket", "Resource": f"arn:aws:s3:::{bucket}"}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))


def _short_history(s3: Any, kms: Any, bucket: str) -> None:
    rule = {
        "ID": "short",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})


def _rotation_off(s3: Any, kms: Any, bucket: str) -> None:
    kms.disable_key_rotation(KeyId=kms.describe_key(KeyId=f"alias/{bucket}-secrets")["KeyMetadata"]["KeyId"])


WEAKENINGS: list[tuple[Callable[..., None], str]] = [
    (_suspend_versioning, "versioning: Suspended, not Enabled"),
    (_sse_s3, "encryption: SSE-S3 (AES256), not SSE-KMS"),
    (_no_bucket_key, "encryption: BucketKeyEnabled is off"),
    (_public_policy_allowed, "public access block: BlockPublicPolicy, RestrictPublicBuckets off"),
    (_acls_back, "object ownership: ObjectWriter, not BucketOwnerEnforced"),
    (_policy_without_tls_rule, "bucket policy: the policy has no statement that denies requests without TLS"),
    (_short_history, "lifecycle: noncurrent versions expire after 30 days, under 90"),
    (_rotation_off, "kms key alias/acme-weak-rotation-off-secrets: automatic key rotation is off"),
]


@pytest.mark.parametrize(("weaken", "expected"), WEAKENINGS, ids=[f.__name__.strip("_") for f, _ in WEAKENINGS])
def test_each_weakness_alone_is_named(clients: Clients, weaken: Callable[..., None], expected: str) -> None:
    s3, kms = clients()
    bucket = f"acme-weak-{weaken.__name__.strip('_').replace('_', '-')}"
    bootstrap(bucket, REGION, s3, kms)
    weaken(s3, kms, bucket)

    result = bootstrap(bucket, REGION, s3, kms)

    assert len(result.weaker) == 1, result.weaker
    assert result.weaker[0].startswith(expected), result.weaker
    assert result.created == []
    if weaken is _rotation_off:
        key_id = kms.describe_key(KeyId=f"alias/{bucket}-secrets")["KeyMetadata"]["KeyId"]
        assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False  # not switched back on


# --- names and regions ------------------------------------------------------------------


def test_bucket_name_owned_by_another_account_is_refused(clients: Clients, endpoint: str) -> None:
    sts = boto3.session.Session(**_session_args(REGION)).client("sts", endpoint_url=endpoint)
    other = sts.assume_role(RoleArn="arn:aws:iam::111111111111:role/other", RoleSessionName="other-team")
    their_s3, _ = clients(**other["Credentials"])
    their_s3.create_bucket(Bucket="acme-state-taken", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3, kms = clients()
    keys_before = len(kms.list_keys()["Keys"])

    with pytest.raises(
        BootstrapInputError, match=r"--name 'acme-state-taken': .*another AWS account.*pick another name"
    ):
        bootstrap("acme-state-taken", REGION, s3, kms)
    assert len(kms.list_keys()["Keys"]) == keys_before  # no key left behind


def test_existing_bucket_in_another_region_is_refused(clients: Clients) -> None:
    s3_frankfurt, _ = clients("eu-central-1")
    s3_frankfurt.create_bucket(
        Bucket="acme-state-elsewhere", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    s3, kms = clients()
    with pytest.raises(BootstrapInputError, match=r"--region 'eu-west-1': .* exists in eu-central-1"):
        bootstrap("acme-state-elsewhere", REGION, s3, kms)


def _session_args(region: str) -> dict[str, str]:
    return {
        "aws_access_key_id": CREDS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDS["AWS_SECRET_ACCESS_KEY"],
        "region_name": region,
    }


class NoCalls:
    """A client that fails the test if anything touches it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"client used ({name}) before the input was validated")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("ab", "is 2 characters; an S3 bucket name has 3 to 63"),
        ("a" * 64, "is 64 characters"),
        ("Acme-State", "lowercase letters, digits, dots and dashes"),
        ("acme_state", "lowercase letters, digits, dots and dashes"),
        ("-acme-state", "starts and ends with a letter or digit"),
        ("acme-state-", "starts and ends with a letter or digit"),
        ("acme..state", "no two adjacent dots"),
        ("192.168.10.1", "must not look like an IP address"),
        ("xn--acme", "reserves names starting with 'xn--'"),
        ("acme-s3alias", "reserves names ending with '-s3alias'"),
        ("acme.state", "use dashes, not dots"),
    ],
)
def test_bad_bucket_names_are_refused_before_any_call(name: str, why: str) -> None:
    with pytest.raises(BootstrapInputError) as err:
        bootstrap(name, REGION, NoCalls(), NoCalls())
    assert str(err.value).startswith(f"--name {name!r}: ")
    assert why in str(err.value)


@pytest.mark.parametrize(
    ("region", "why"),
    [
        ("mars", "not an AWS region name like eu-west-1"),
        ("EU-WEST-1", "not an AWS region name"),
        ("eu_west_1", "not an AWS region name"),
        ("", "not an AWS region name"),
        ("eu-west-1a", "is an availability zone; its region is 'eu-west-1'"),
    ],
)
def test_bad_regions_are_refused_before_any_call(region: str, why: str) -> None:
    with pytest.raises(BootstrapInputError) as err:
        bootstrap("acme-state", region, NoCalls(), NoCalls())
    assert str(err.value).startswith(f"--region {region!r}: ")
    assert why in str(err.value)


def test_clients_for_another_region_are_a_bug_not_input(clients: Clients) -> None:
    _, frankfurt_kms = clients("eu-central-1")
    with pytest.raises(ValueError, match="kms client is for region eu-central-1") as err:
        bootstrap("acme-state-wrong-client", REGION, clients()[0], frankfurt_kms)
    assert not isinstance(err.value, BootstrapInputError)


# --- what to print ----------------------------------------------------------------------


def test_login_lines_are_exact_and_survive_the_shell() -> None:
    result = BootstrapResult(
        bucket="acme-pulumi-state",
        key_arn="arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        alias="alias/acme-pulumi-state-secrets",
    )
    lines = login_lines(result, "eu-west-1")
    assert lines == [
        'pulumi login "s3://acme-pulumi-state?region=eu-west-1&awssdk=v2"',
        'pulumi stack init STACK --secrets-provider "awskms://alias/acme-pulumi-state-secrets?region=eu-west-1"',
        'pulumi stack change-secrets-provider "awskms://alias/acme-pulumi-state-secrets?region=eu-west-1"'
        "   # for a stack that already exists",
    ]
    # Quoted, so `&` and `?` reach pulumi instead of the shell.
    assert shlex.split(lines[0]) == ["pulumi", "login", "s3://acme-pulumi-state?region=eu-west-1&awssdk=v2"]
    assert shlex.split(lines[1])[-1] == "awskms://alias/acme-pulumi-state-secrets?region=eu-west-1"
