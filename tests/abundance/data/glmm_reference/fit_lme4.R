#!/usr/bin/env Rscript
## Reference fits of the binomial GLMM with lme4::glmer (Laplace, nAGQ = 1).
## Run from this directory:  Rscript fit_lme4.R
## Reads the CSVs written by make_datasets.py and writes lme4_results.json.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
file_arg <- sub("^--file=", "", args[grep("^--file=", args)])
here <- if (length(file_arg)) dirname(normalizePath(file_arg)) else getwd()

datasets <- list(
  factor_44       = list(file = "factor_44.csv",       continuous = FALSE),
  unknown_level   = list(file = "unknown_level.csv",   continuous = FALSE),
  boundary        = list(file = "boundary.csv",        continuous = FALSE),
  missing_samples = list(file = "missing_samples.csv", continuous = FALSE),
  continuous      = list(file = "continuous.csv",      continuous = TRUE)
)

f_factor <- cbind(count, total - count) ~ response * timepoint +
  (1 | patient_id) + (1 | sample_id)
f_cont <- cbind(count, total - count) ~ response * timepoint_months +
  (1 | patient_id) + (1 | sample_id)

## Fit and collect any warnings/messages raised during fitting.
fit_capture <- function(formula, data, control = NULL) {
  warns <- character(0)
  fit <- withCallingHandlers(
    {
      if (is.null(control)) {
        glmer(formula, family = binomial, data = data)
      } else {
        glmer(formula, family = binomial, data = data, control = control)
      }
    },
    warning = function(w) {
      warns <<- c(warns, conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      warns <<- c(warns, trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    }
  )
  list(fit = fit, warnings = warns)
}

as_list_or_empty <- function(x) if (is.null(x)) list() else as.list(x)

named_vec <- function(x) as.list(setNames(as.numeric(x), names(x)))

summarise_fit <- function(fit, warns) {
  fe <- fixef(fit)
  V <- as.matrix(vcov(fit))
  cf <- summary(fit)$coefficients
  vc <- as.data.frame(VarCorr(fit))
  ll <- logLik(fit)
  list(
    fixef_names = names(fe),
    fixef = named_vec(fe),
    se = named_vec(setNames(sqrt(diag(V)), names(fe))),
    vcov = lapply(seq_len(nrow(V)), function(i) as.numeric(V[i, ])),
    z_value = named_vec(setNames(cf[, "z value"], rownames(cf))),
    p_value = named_vec(setNames(cf[, "Pr(>|z|)"], rownames(cf))),
    random_effects = lapply(seq_len(nrow(vc)), function(i) list(
      grp = vc$grp[i], var1 = vc$var1[i],
      variance = vc$vcov[i], sd = vc$sdcor[i])),
    re_sd = as.list(setNames(vc$sdcor, vc$grp)),
    theta = named_vec(getME(fit, "theta")),
    logLik = as.numeric(ll),
    df = attr(ll, "df"),
    minus2logLik = -2 * as.numeric(ll),
    deviance = deviance(fit),
    AIC = AIC(fit),
    BIC = BIC(fit),
    nobs = nobs(fit),
    is_singular = isSingular(fit),
    optimizer = fit@optinfo$optimizer,
    conv_messages = as_list_or_empty(fit@optinfo$conv$lme4$messages),
    optimizer_conv_code = fit@optinfo$conv$opt,
    warnings = as_list_or_empty(warns)
  )
}

results <- list(
  meta = list(
    R_version = R.version.string,
    lme4_version = as.character(packageVersion("lme4")),
    jsonlite_version = as.character(packageVersion("jsonlite")),
    default_glmer_optimizer = glmerControl()$optimizer,
    notes = paste(
      "family = binomial (logit), nAGQ = 1 (Laplace), default glmerControl().",
      "deviance = lme4 deviance(fit) (for GLMMs NOT equal to -2*logLik);",
      "minus2logLik = -2*logLik. re_sd are sdcor from as.data.frame(VarCorr(fit)).",
      "alt_optimizers refit with glmerControl(optimizer = ...) for both stages."
    )
  ),
  datasets = list()
)

for (nm in names(datasets)) {
  spec <- datasets[[nm]]
  d <- read.csv(file.path(here, spec$file), stringsAsFactors = FALSE)
  resp_levels <- c("responder", "non_responder")
  if ("unknown" %in% d$response) resp_levels <- c(resp_levels, "unknown")
  stopifnot(all(d$response %in% resp_levels))
  d$response <- factor(d$response, levels = resp_levels)
  d$patient_id <- factor(d$patient_id)
  d$sample_id <- factor(d$sample_id)
  if (spec$continuous) {
    d$timepoint_months <- as.numeric(d$timepoint_months)
    form <- f_cont
  } else {
    d$timepoint <- factor(as.character(d$timepoint_months), levels = c("0", "3", "6"))
    stopifnot(!anyNA(d$timepoint))
    form <- f_factor
  }

  cat(sprintf("== %s (%d rows)\n", nm, nrow(d)))
  main <- fit_capture(form, d)
  res <- summarise_fit(main$fit, main$warnings)
  res$file <- spec$file
  res$formula <- paste(deparse(form, width.cutoff = 500L), collapse = " ")
  res$response_levels <- resp_levels

  alt <- list()
  for (opt in c("bobyqa", "Nelder_Mead")) {
    a <- fit_capture(form, d, control = glmerControl(optimizer = opt))
    afe <- fixef(a$fit)
    vc <- as.data.frame(VarCorr(a$fit))
    alt[[opt]] <- list(
      fixef = named_vec(afe),
      re_sd = as.list(setNames(vc$sdcor, vc$grp)),
      logLik = as.numeric(logLik(a$fit)),
      conv_messages = as_list_or_empty(a$fit@optinfo$conv$lme4$messages),
      warnings = as_list_or_empty(a$warnings),
      max_abs_diff_fixef_vs_default = max(abs(afe - fixef(main$fit))),
      abs_diff_logLik_vs_default = abs(as.numeric(logLik(a$fit)) - res$logLik)
    )
  }
  res$alt_optimizers <- alt
  results$datasets[[nm]] <- res

  print(round(fixef(main$fit), 5))
  print(as.data.frame(VarCorr(main$fit)))
  cat("logLik:", format(res$logLik, digits = 12), "\n")
  if (length(main$warnings)) cat("warnings:", main$warnings, sep = "\n  ")
}

out <- file.path(here, "lme4_results.json")
write_json(results, out, digits = NA, auto_unbox = TRUE, pretty = TRUE)
cat("wrote", out, "\n")
