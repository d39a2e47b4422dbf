"""A boto3-shaped fake client whose every request is checked against the API: botocore's own model of the
service validates the parameters (names, types, required members) exactly as a real client would before
sending, so a request that AWS would refuse for its shape fails the test. Answers come from handlers the
test gives, one per operation (snake_case, as boto3 names them); an operation without one fails the test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import botocore.session
from botocore import xform_name
from botocore.validate import ParamValidator

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class FakeClient:
    def __init__(self, service: str, handlers: dict[str, Handler]) -> None:
        self.service = service
        self.model = botocore.session.get_session().get_service_model(service)
        self.operations = {xform_name(name): name for name in self.model.operation_names}
        unknown = sorted(set(handlers) - set(self.operations))
        assert not unknown, f"{service} has no operation {unknown}"
        self.handlers = handlers
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., dict[str, Any]]:
        if name not in self.operations:
            raise AttributeError(f"{self.service} has no operation {name}")

        def call(**params: Any) -> dict[str, Any]:
            shape = self.model.operation_model(self.operations[name]).input_shape
            report = ParamValidator().validate(params, shape)
            assert not report.has_errors(), f"{self.service}.{name}: {report.generate_report()}"
            self.calls.append((name, params))
            assert name in self.handlers, f"unexpected call {self.service}.{name}({params})"
            return self.handlers[name](params)

        return call

    def get_paginator(self, name: str) -> Any:
        client = self

        class Paginator:
            def paginate(self, **params: Any) -> list[dict[str, Any]]:
                return [getattr(client, name)(**params)]

        return Paginator()

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]
