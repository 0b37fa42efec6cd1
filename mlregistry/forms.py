import json

from django import forms

from mlregistry.models import ArtifactFormat, RegisteredModel


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
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(parsed, self.expect):
            raise forms.ValidationError("Wrong JSON type for this field.")
        return parsed


class ModelVersionUploadForm(forms.Form):
    model = forms.ModelChoiceField(queryset=RegisteredModel.objects.all())
    artifact = forms.FileField(
        help_text="A .skops file (recommended) or, with permission, a pickle."
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


class TransitionForm(forms.Form):
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}))
