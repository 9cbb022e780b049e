"""Latent structure of item data (rows are respondents or baskets, columns their items):
latent classes, factors, non-negative components and correspondence analysis."""

from services.processing.processors.base import Processor
from services.processing.processors.latent import classes, correspondence, factors, nmf

# Their fits spend long stretches inside library calls: isolated, so a cancel kills the
# child process running them (a latent_classes fit also stops at its next EM iteration).
PROCESSORS: list[Processor] = [
    Processor(
        name="latent_classes",
        description="Latent class analysis of binary and categorical items by EM (StepMix):"
        " class sizes, item probabilities per class, log-likelihood, AIC, BIC, entropy;"
        " memberships with posterior probabilities.",
        params_model=classes.LatentClassesParams,
        artifacts=[classes.ARTIFACT],
        run=classes.run,
        check_columns=classes.check_columns,
        isolated=True,
    ),
    Processor(
        name="nmf",
        description="Non-negative matrix factorisation (scikit-learn NMF) of non-negative"
        " items: components, reconstruction error; per-row weights.",
        params_model=nmf.NmfParams,
        artifacts=[nmf.ARTIFACT],
        run=nmf.run,
        check_columns=nmf.check_columns,
        isolated=True,
    ),
    Processor(
        name="correspondence",
        description="Multiple correspondence analysis (prince MCA) of categorical items:"
        " eigenvalues, explained inertia, category coordinates and contributions;"
        " per-row coordinates.",
        params_model=correspondence.CorrespondenceParams,
        artifacts=[correspondence.ARTIFACT],
        run=correspondence.run,
        check_columns=correspondence.check_columns,
        isolated=True,
    ),
    Processor(
        name="factor_analysis",
        description="Exploratory factor analysis (minres or ML; none, varimax, promax or"
        " oblimin rotation; Pearson or tetrachoric correlations): loadings, communalities,"
        " uniquenesses, variance explained; per-row factor scores.",
        params_model=factors.FactorAnalysisParams,
        artifacts=[factors.ARTIFACT],
        run=factors.run,
        check_columns=factors.check_columns,
        isolated=True,
    ),
]
