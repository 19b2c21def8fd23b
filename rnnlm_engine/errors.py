"""One exception hierarchy for every error the engine raises on purpose."""


class RnnlmError(Exception):
    """Base class: every error the engine raises on purpose is one of these."""


class ConfigError(RnnlmError, ValueError):
    """A model configuration is invalid or does not match the parameters given."""


class ParameterError(RnnlmError, ValueError):
    """A parameter (weight) array is missing, misshapen, of the wrong dtype or not finite."""


class InputError(RnnlmError, ValueError):
    """Token ids, targets or a recurrent state passed to the model are invalid."""


class VocabularyError(RnnlmError, ValueError):
    """A token is not in the vocabulary, or a vocabulary is malformed."""


class ModelFileError(RnnlmError):
    """A model file is unreadable, corrupt, hostile or of an unsupported version."""


class BackendError(RnnlmError):
    """A requested compute backend is unknown or not usable on this machine."""
