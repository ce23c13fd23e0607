# pushworker on Cloud Run, fed by a Pub/Sub push subscription and an example
# Cloud Scheduler job. The service is public (Clerk users call it from their
# browsers) and verifies every Google and Clerk token itself, so Pub/Sub and
# Cloud Scheduler need no run.invoker: what matters is that the audience and
# the service accounts they put in their OIDC tokens are exactly the ones the
# worker is told to accept (GOOGLE_AUDIENCES, GOOGLE_SERVICE_ACCOUNTS).
# tests/terraform.rs checks that consistency. An optional Eventarc trigger
# (eventarc_enabled, off by default) sends a bucket's object finalize events
# to /events as CloudEvents, with a token of its own service account. An
# optional Managed Service for Prometheus sidecar (metrics_sidecar_enabled,
# off by default) scrapes the worker's /metrics over localhost.

locals {
  # The one audience of every Google token the worker accepts. It feeds both
  # the tokens' senders (push subscription, scheduler job) and GOOGLE_AUDIENCES.
  push_audience = coalesce(var.push_audience, "pushworker-${var.service_name}")

  # The push request (HTTP timeout = ack deadline) must outlive the job, so
  # that the worker's own 504 on timeout, not Pub/Sub, ends the attempt.
  ack_margin_secs = 5

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # Eventarc's tokens carry the service's URL as their audience; this is its
  # deterministic form (the service cannot read its own uri attribute).
  service_url = "https://${var.service_name}-${data.google_project.this.number}.${var.region}.run.app"

  eventarc_count = var.eventarc_enabled ? 1 : 0

  # The worker serves /metrics on loopback only, never on the public port:
  # the sidecar shares the instance's network and scrapes it there. With the
  # sidecar off nobody would scrape, so the worker records nothing.
  metrics_sidecar_count = var.metrics_sidecar_enabled ? 1 : 0
  metrics_port          = 9464
  metrics_addr          = var.metrics_sidecar_enabled ? "127.0.0.1:${local.metrics_port}" : "off"

  # Pinned: a new sidecar release is a reviewed change, not a surprise on the
  # next deploy.
  gmp_sidecar_image = "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.9.2"

  # The sidecar's RunMonitoring configuration, which it reads from
  # /etc/rungmp/config.yaml. Without it the sidecar scrapes port 8080 (the
  # public port), where /metrics is a 404.
  gmp_config = yamlencode({
    apiVersion = "monitoring.googleapis.com/v1beta"
    kind       = "RunMonitoring"
    metadata   = { name = var.service_name }
    spec = {
      endpoints = [{
        port     = local.metrics_port
        path     = "/metrics"
        interval = var.metrics_scrape_interval
      }]
    }
  })
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_project_service" "apis" {
  for_each = toset(concat(
    ["run.googleapis.com", "pubsub.googleapis.com", "cloudscheduler.googleapis.com", "iam.googleapis.com"],
    var.database_url_secret == null ? [] : ["secretmanager.googleapis.com"],
    var.eventarc_enabled ? ["eventarc.googleapis.com"] : [],
    var.metrics_sidecar_enabled ? ["monitoring.googleapis.com", "secretmanager.googleapis.com"] : [],
  ))

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# --- Service accounts -------------------------------------------------------

resource "google_service_account" "runtime" {
  project      = var.project_id
  account_id   = "${var.service_name}-run"
  display_name = "${var.service_name} Cloud Run runtime"
}

resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.service_name}-push"
  display_name = "${var.service_name} Pub/Sub push identity"
}

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${var.service_name}-sched"
  display_name = "${var.service_name} Cloud Scheduler identity"
}

# The Eventarc trigger's identity: its tokens name it, and it holds only
# run.invoker on the service. Made even with the trigger off, so that the
# worker's list of accepted accounts does not change when it is turned on.
resource "google_service_account" "eventarc" {
  project      = var.project_id
  account_id   = "${var.service_name}-evt"
  display_name = "${var.service_name} Eventarc trigger identity"
}

# Pub/Sub's service agent mints the push OIDC tokens as the push account.
resource "google_service_account_iam_member" "pubsub_agent_mints_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent

  depends_on = [google_project_service.apis]
}

# --- Cloud Run ----------------------------------------------------------------

resource "google_cloud_run_v2_service" "pushworker" {
  project             = var.project_id
  name                = var.service_name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  template {
    service_account = google_service_account.runtime.email
    # At least the job timeout, so the worker answers (504 on timeout) before
    # Cloud Run cuts the request.
    timeout = "${var.job_timeout_secs + 10}s"

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      # Named so that the metrics sidecar can wait for it.
      name  = "pushworker"
      image = var.image

      ports {
        container_port = 8080
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
      }

      env {
        name  = "GOOGLE_AUDIENCES"
        value = join(",", [local.push_audience, local.service_url])
      }
      env {
        name  = "GOOGLE_SERVICE_ACCOUNTS"
        value = join(",", [google_service_account.push.email, google_service_account.scheduler.email, google_service_account.eventarc.email])
      }
      env {
        name  = "TRIGGER_PERMISSION"
        value = var.trigger_permission
      }
      env {
        name  = "JOB_TIMEOUT_SECS"
        value = tostring(var.job_timeout_secs)
      }
      env {
        name  = "LOG_FORMAT"
        value = "json"
      }
      env {
        # Lets log lines carry logging.googleapis.com/trace = projects/P/traces/T.
        name  = "GOOGLE_CLOUD_PROJECT"
        value = var.project_id
      }
      env {
        # Cloud Run sends SIGKILL 10 s after SIGTERM.
        name  = "SHUTDOWN_GRACE_SECS"
        value = "8"
      }
      env {
        name  = "DEAD_LETTER_TOPIC"
        value = google_pubsub_topic.dead_letter.id
      }
      env {
        name  = "METRICS_ADDR"
        value = local.metrics_addr
      }

      # Clerk is optional: without a publishable key the worker serves Google
      # callers only.
      dynamic "env" {
        for_each = var.clerk_publishable_key == "" ? [] : [var.clerk_publishable_key]
        content {
          name  = "CLERK_PUBLISHABLE_KEY"
          value = env.value
        }
      }
      dynamic "env" {
        for_each = var.clerk_publishable_key == "" ? [] : [join(",", var.clerk_authorized_parties)]
        content {
          name  = "CLERK_AUTHORIZED_PARTIES"
          value = env.value
        }
      }

      dynamic "env" {
        for_each = var.database_url_secret == null ? [] : [var.database_url_secret]
        content {
          name = "DATABASE_URL"
          value_source {
            secret_key_ref {
              secret  = env.value
              version = "latest"
            }
          }
        }
      }
    }

    # Managed Service for Prometheus: starts once the worker is healthy
    # (its startup probe), scrapes /metrics on localhost and writes to Cloud
    # Monitoring as the runtime service account.
    dynamic "containers" {
      for_each = local.metrics_sidecar_count == 1 ? [local.gmp_sidecar_image] : []
      content {
        name       = "gmp-sidecar"
        image      = containers.value
        depends_on = ["pushworker"]

        volume_mounts {
          name       = "gmp-config"
          mount_path = "/etc/rungmp"
        }
      }
    }

    dynamic "volumes" {
      for_each = local.metrics_sidecar_count == 1 ? ["gmp-config"] : []
      content {
        name = volumes.value
        secret {
          secret = google_secret_manager_secret.gmp_config[0].secret_id
          items {
            # The version itself, not "latest": a changed configuration is
            # then a new revision, which instances pick up.
            version = google_secret_manager_secret_version.gmp_config[0].version
            path    = "config.yaml"
          }
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.clerk_publishable_key == "" || length(var.clerk_authorized_parties) > 0
      error_message = "clerk_authorized_parties must list the admin page origins when clerk_publishable_key is set (the worker refuses to start otherwise)."
    }
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.runtime_reads_database_url,
    google_secret_manager_secret_iam_member.runtime_reads_gmp_config,
    google_project_iam_member.runtime_writes_metrics,
  ]
}

# Public: Clerk users come from browsers, and the app authenticates every
# request itself (Google and Clerk tokens, fully verified).
resource "google_cloud_run_v2_service_iam_member" "public" {
  project  = google_cloud_run_v2_service.pushworker.project
  location = google_cloud_run_v2_service.pushworker.location
  name     = google_cloud_run_v2_service.pushworker.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

resource "google_pubsub_topic_iam_member" "runtime_publishes_dead_letters" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.runtime.member
}

resource "google_secret_manager_secret_iam_member" "runtime_reads_database_url" {
  count = var.database_url_secret == null ? 0 : 1

  project   = var.project_id
  secret_id = var.database_url_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime.member

  depends_on = [google_project_service.apis]
}

# --- Metrics (optional) --------------------------------------------------------

resource "google_secret_manager_secret" "gmp_config" {
  count = local.metrics_sidecar_count

  project   = var.project_id
  secret_id = "${var.service_name}-gmp-config"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "gmp_config" {
  count = local.metrics_sidecar_count

  secret      = google_secret_manager_secret.gmp_config[0].id
  secret_data = local.gmp_config
}

resource "google_secret_manager_secret_iam_member" "runtime_reads_gmp_config" {
  count = local.metrics_sidecar_count

  project   = var.project_id
  secret_id = google_secret_manager_secret.gmp_config[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime.member
}

# The sidecar writes the scraped series to Cloud Monitoring as the runtime
# service account.
resource "google_project_iam_member" "runtime_writes_metrics" {
  count = local.metrics_sidecar_count

  project = var.project_id
  role    = "roles/monitoring.metricWriter"
  member  = google_service_account.runtime.member

  depends_on = [google_project_service.apis]
}

# --- Pub/Sub ------------------------------------------------------------------

resource "google_pubsub_topic" "jobs" {
  project = var.project_id
  name    = "${var.service_name}-jobs"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  project = var.project_id
  name    = "${var.service_name}-dead-letter"

  depends_on = [google_project_service.apis]
}

# A dead-letter topic without a subscription drops what it receives: keep the
# dead letters here for inspection and replay.
resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project_id
  name                       = "${var.service_name}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "push" {
  project = var.project_id
  name    = "${var.service_name}-push"
  topic   = google_pubsub_topic.jobs.id

  # Also the HTTP timeout of each push request.
  ack_deadline_seconds = var.ack_deadline_seconds

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.pushworker.uri}/pubsub/push"

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.push_audience
    }
  }

  retry_policy {
    minimum_backoff = var.retry_minimum_backoff
    maximum_backoff = var.retry_maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  lifecycle {
    precondition {
      condition     = var.ack_deadline_seconds >= var.job_timeout_secs + local.ack_margin_secs
      error_message = "ack_deadline_seconds must be at least job_timeout_secs + 5: a push whose job times out must get the worker's 504 before Pub/Sub gives up on the request."
    }
  }

  depends_on = [
    google_service_account_iam_member.pubsub_agent_mints_push_tokens,
    google_pubsub_topic_iam_member.pubsub_agent_publishes_dead_letters,
  ]
}

# The dead-letter policy works through Pub/Sub's service agent: it publishes
# to the dead-letter topic and acknowledges on the source subscription.
resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_acks_source" {
  project      = var.project_id
  subscription = google_pubsub_subscription.push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# --- Cloud Scheduler (example) -----------------------------------------------

# Runs the `echo` job every 15 minutes with a Google OIDC token, the same way
# any scheduled job would be wired.
resource "google_cloud_scheduler_job" "echo" {
  project          = var.project_id
  region           = var.region
  name             = "${var.service_name}-echo"
  description      = "Example: POST /jobs/echo on ${var.service_name}."
  schedule         = var.scheduler_cron
  time_zone        = var.scheduler_time_zone
  attempt_deadline = "${max(15, var.job_timeout_secs + 10)}s"

  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.pushworker.uri}/jobs/echo"
    body        = base64encode(jsonencode({ message = "scheduled" }))
    headers = {
      "Content-Type" = "application/json"
    }

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.push_audience
    }
  }

  depends_on = [google_project_service.apis]
}

# --- Eventarc (optional) -------------------------------------------------------

# The trigger's service account may invoke the service, and nothing else.
resource "google_cloud_run_v2_service_iam_member" "eventarc_invokes" {
  count = local.eventarc_count

  project  = google_cloud_run_v2_service.pushworker.project
  location = google_cloud_run_v2_service.pushworker.location
  name     = google_cloud_run_v2_service.pushworker.name
  role     = "roles/run.invoker"
  member   = google_service_account.eventarc.member
}

data "google_storage_project_service_account" "gcs" {
  count   = local.eventarc_count
  project = var.project_id
}

# Cloud Storage's service agent publishes the bucket's events to the
# trigger's transport topic.
resource "google_project_iam_member" "gcs_agent_publishes_events" {
  count = local.eventarc_count

  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = data.google_storage_project_service_account.gcs[0].member
}

# A new object in eventarc_bucket: a google.cloud.storage.object.v1.finalized
# CloudEvent, in binary mode, to POST /events.
resource "google_eventarc_trigger" "storage_finalized" {
  count = local.eventarc_count

  project         = var.project_id
  name            = "${var.service_name}-storage-finalized"
  location        = coalesce(var.eventarc_location, var.region)
  service_account = google_service_account.eventarc.email

  matching_criteria {
    attribute = "type"
    value     = "google.cloud.storage.object.v1.finalized"
  }
  matching_criteria {
    attribute = "bucket"
    value     = var.eventarc_bucket
  }

  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.pushworker.name
      region  = var.region
      path    = "/events"
    }
  }

  lifecycle {
    precondition {
      condition     = var.eventarc_bucket != ""
      error_message = "eventarc_bucket must name the bucket whose finalize events the trigger sends."
    }
  }

  depends_on = [
    google_project_service.apis,
    google_cloud_run_v2_service_iam_member.eventarc_invokes,
    google_project_iam_member.gcs_agent_publishes_events,
  ]
}
