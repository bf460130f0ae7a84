"""The paper's defaults, importable without torch (the TUI paints before heavy imports)."""

DEFAULT_K = 10  # top-k tuned singular vectors tested, as in the paper's code and PEFT
DEFAULT_EPSILON = 0.5  # intruder iff max|cos| < ε
TOP_VECTORS = 64  # max|cos| kept per matrix for this many top tuned vectors: the largest k answered
HEAD_VECTORS = 32  # a base matrix's top left vectors cached beside its spectrum, for the counts
SIMILARITY_SIZE = 32  # top-K × top-K block of |Uᵀ U0| kept for the heatmap (paper Fig. 3 uses 10)
EPSILON_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # paper Fig. 4
SCOPES = ("top", "all")  # mitigation: each matrix's top intruder (the paper) or all in the top k (PEFT)
LAMBDA_RANGE = (0.0, 2.0)  # W' = W + (λ − 1)σuvᵀ: 1 changes nothing, 0 removes the intruder
DEFAULT_LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the forgetting probe's sweep (paper Fig. 8)
DEFAULT_MAX_TOKENS = 2048  # per probe text: the bundled samples' whole sweep runs in seconds on a CPU

