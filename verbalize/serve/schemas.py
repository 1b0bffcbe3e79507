"""Request and response bodies of the HTTP API (they also make the OpenAPI document at ``/docs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

# A usable text holds a character that str.isspace() does not count as white space (the server strips texts with
# str.strip(), which removes exactly those). Written with escapes that Python, ECMA-262 and Rust regexes all read;
# a JSON Schema "pattern" matches anywhere in the string.
NON_BLANK = "[^\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"


class ClassifyRequest(BaseModel):
    """``POST /v1/classify``: one template and the rows to classify with it.

    Give ``inputs`` (one object per row, keyed by the template's field names as ``GET /v1/templates``
    lists them: ``{"text": ...}``, or ``{"premise": ..., "hypothesis": ...}`` for a pair template), or,
    for a template with one field, ``texts`` (one string per row). Exactly one of the two.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"template": "sst2", "texts": ["a charming film", "two hours I will never get back"]},
                {"template": "same_sentiment", "inputs": [{"review1": "A gem.", "review2": "Loved it."}]},
            ]
        },
    )

    template: StrictStr = Field(description="Name of a served template (see GET /v1/templates)")
    texts: list[StrictStr] | None = Field(
        default=None, description="Texts to classify, in order; only for a template with one field"
    )
    inputs: list[dict[StrictStr, StrictStr]] | None = Field(
        default=None,
        description="Rows to classify, in order, each an object {field: text} holding every field of the "
        'template (its "fields" in GET /v1/templates), e.g. [{"text": "a fine film"}] or '
        '[{"review1": "A gem.", "review2": "Loved it."}]',
    )

    @field_validator("texts", "inputs", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Absent means "not this one"; an explicit null is refused, as the OpenAPI document (non-nullable) says.
        if value is None:
            raise ValueError("must be a list when given; leave the key out instead of sending null")
        return value


class Prediction(BaseModel):
    label: str = Field(description="The most probable label")
    probabilities: dict[str, float] = Field(description="Every label's probability (template label order)")


class ClassifyResponse(BaseModel):
    template: str
    version: int = Field(description="Served version of the template (1, then +1 per valid reload)")
    labels: list[str] = Field(description="The template's labels in order")
    predictions: list[Prediction] = Field(description="One per input, in input order")


class ErrorResponse(BaseModel):
    error: str = Field(
        description="Machine-readable code, e.g. unknown_template, missing_field, empty_text, queue_full"
    )
    message: str = Field(description="What is wrong, where, and how to fix it")
    location: str | None = Field(default=None, description="Where in the request, e.g. texts[3], inputs[0].review2")


class Health(BaseModel):
    status: str = Field(description='"ok" while the process answers')


class Readiness(BaseModel):
    status: str = Field(description='"ready", or "not ready" (with HTTP 503)')
    templates: list[str] | None = Field(default=None, description="Served template names (when ready)")
    detail: str | None = Field(default=None, description="Why not ready (with HTTP 503)")


class TemplatesResponse(BaseModel):
    templates: list[dict[str, Any]] = Field(description="Each served template: name, version, fields, labels, ...")
    problems: list[dict[str, Any]] = Field(description="Sources that failed to load or reload, with their issues")


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}}}


def classify_request_schema(max_texts: int, max_text_chars: int | None = None) -> dict[str, Any]:
    """The JSON schema of a ``POST /v1/classify`` body exactly as the server checks it (for the OpenAPI document).

    Beyond :class:`ClassifyRequest`'s types it states what the server refuses: exactly one of ``texts`` and
    ``inputs`` (not null), 1 to ``max_texts`` rows, texts that are not blank (:data:`NON_BLANK`) and at most
    ``max_text_chars`` characters long. What depends on the served template (its name, its fields) cannot be
    stated here; the server answers those with 404 and 422.

    Parameters
    ----------
    max_texts : int
        ``ServeConfig.max_request_texts``: the most rows per request (413 beyond).
    max_text_chars : int, optional
        The longest text in characters (Unicode code points) the server admits; None: no cap in the schema.

    Returns
    -------
    dict
        A JSON schema (OpenAPI 3.1 dialect).
    """
    schema = ClassifyRequest.model_json_schema()
    props = schema["properties"]
    text: dict[str, Any] = {
        "type": "string",
        "minLength": 1,
        "pattern": NON_BLANK,
        "description": "A text: not empty nor white space only, no lone surrogate (422 empty_text / invalid_text)",
    }
    if max_text_chars is not None:
        text["maxLength"] = max_text_chars
    props["template"]["minLength"] = 1
    row = {"type": "object", "minProperties": 1, "additionalProperties": text}
    for key, item in (("texts", text), ("inputs", row)):
        old = props[key]
        props[key] = {
            "title": old["title"],
            "description": f"{old['description']}; 1 to {max_texts} rows (413 too_many_texts beyond)",
            "type": "array",
            "items": item,
            "minItems": 1,
            "maxItems": max_texts,
        }
    schema["oneOf"] = [{"required": ["texts"]}, {"required": ["inputs"]}]
    return schema
