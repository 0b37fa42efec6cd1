import math
from typing import Any

from django import forms
from rest_framework.exceptions import ParseError

from config.errors import ValidationFailed
from config.parsers import parse_json
from mlregistry.lineage import lineage_validate
from mlregistry.models import ArtifactFormat, RegisteredModel
from mlregistry.tags import tags_changes_validate


def _all_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, int | float) and not isinstance(node, bool):
            try:
                if not math.isfinite(node):
                    return False
            except OverflowError:
                return False
    return True


class JSONTextField(forms.CharField):
    """A textarea holding JSON; empty means 'not given'."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60})

    def __init__(self, *, expect: type | tuple[type, ...], **kwargs):
        self.expect = expect
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def clean(self, value):
        value = super().clean(value)
        if not value:
            return None
        # The API's one parser (depth and NUL rules): PostgreSQL refuses NUL, NaN and
        # Infinity in JSON, and the stdlib parser accepts all three.
        try:
            parsed = parse_json(value)
        except ParseError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.detail}") from None
        except ValidationFailed as exc:
            raise forms.ValidationError(exc.message) from None
        if not _all_finite(parsed):
            raise forms.ValidationError(
                "Numbers must be finite and fit a float (no NaN, Infinity or 400-digit integers)."
            )
        if not isinstance(parsed, self.expect):
            raise forms.ValidationError("Wrong JSON type for this field.")
        return parsed


class ModelVersionUploadForm(forms.Form):
    model = forms.ModelChoiceField(queryset=RegisteredModel.objects.all())
    artifact = forms.FileField(
        help_text="A .skops file (recommended), with permission a pickle, or an MLflow model "
        "directory as .zip or .tar.gz (its MLmodel names the format). It is checked and "
        "previewed before anything is registered.",
        widget=forms.ClearableFileInput(
            attrs={"accept": ".skops,.joblib,.pkl,.pickle,.zip,.tar.gz,.tgz"}
        ),
    )
    artifact_format = forms.ChoiceField(
        choices=ArtifactFormat.choices, initial=ArtifactFormat.SKOPS
    )
    input_schema = JSONTextField(
        expect=(list, dict),
        help_text="Optional: inferred from the model's feature names when empty.",
    )
    metrics = JSONTextField(expect=dict, help_text='Optional, e.g. {"accuracy": 0.97}')
    metadata = JSONTextField(expect=dict, help_text="Optional free-form JSON object.")
    reference_sample = JSONTextField(
        expect=list, help_text="Optional JSON list of feature rows (for drift)."
    )
    tags = JSONTextField(expect=dict, help_text='Optional, e.g. {"validated": "true"}')
    run_id = forms.CharField(
        required=False, max_length=200, help_text="Optional: the experiment run it came from."
    )
    git_commit = forms.CharField(
        required=False, max_length=64, help_text="Optional: commit of the training code."
    )
    source_url = forms.CharField(
        required=False, max_length=2000, help_text="Optional: http(s) link to code or run."
    )
    training_dataset_uri = forms.CharField(
        required=False, max_length=2000, help_text="Optional: where the training data lives."
    )
    training_dataset_sha256 = forms.CharField(
        required=False, max_length=64, help_text="Optional: SHA-256 of the training data."
    )

    def clean(self):
        """Tags and lineage by the service's own rules, so the preview shows what the
        confirmation would refuse."""
        data = super().clean()
        uri, sha = data.get("training_dataset_uri"), data.get("training_dataset_sha256")
        data["training_dataset"] = {"uri": uri, "sha256": sha} if uri or sha else None
        try:
            tags_changes_validate(data.get("tags") or {}, allow_delete=False)
            lineage_validate(
                run_id=data.get("run_id"),
                git_commit=data.get("git_commit"),
                source_url=data.get("source_url"),
                training_dataset=data["training_dataset"],
            )
        except ValidationFailed as exc:
            for where, why in exc.fields.items():
                field = where.replace(".", "_") if where.startswith("training_dataset.") else where
                field = field.split(".")[0] if field.startswith("tags") else field
                if field == "training_dataset":
                    field = "training_dataset_uri"
                self.add_error(field if field in self.fields else None, why)
        return data


class AliasSetForm(forms.Form):
    alias = forms.RegexField(
        regex=r"^[a-z][a-z0-9_-]{0,63}$",
        max_length=64,
        help_text="Lower-case letters, digits, '_' and '-'; e.g. champion, challenger, shadow. "
        "'latest' and 'v<number>' are reserved.",
    )
    comment = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2, "cols": 60})
    )
    # The version the alias pointed to when the confirmation was shown ("" = none).
    expected = forms.CharField(required=False, widget=forms.HiddenInput)


class TransitionForm(forms.Form):
    comment = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Why this change? It is kept in the stage history.",
    )
    keep_previous_in_staging = forms.BooleanField(
        required=False,
        label="Move the replaced production version to staging instead of archiving it",
    )
    # The production version the page showed; a change since then refuses the move.
    expected_production = forms.IntegerField(required=False, widget=forms.HiddenInput)


class RollbackForm(forms.Form):
    comment = forms.CharField(required=False, max_length=2000, widget=forms.HiddenInput)
    expected_production = forms.IntegerField(required=False, widget=forms.HiddenInput)


class PendingUploadForm(forms.Form):
    """Step 2 of an upload: confirm or cancel the previewed file named by its token."""

    token = forms.CharField(max_length=64, widget=forms.HiddenInput)
