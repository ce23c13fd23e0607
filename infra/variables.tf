variable "project_id" {
  description = "Google Cloud project that hosts the service, the topics and the scheduler job."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run service and the Cloud Scheduler job."
  type        = string
  default     = "europe-west1"
}

variable "service_name" {
  description = "Name of the Cloud Run service; also the prefix of the topics, subscriptions and service accounts."
  type        = string
  default     = "pushworker"

  validation {
    # Service-account ids are 6-30 characters and get a suffix of up to 6 ("-sched").
    condition     = can(regex("^[a-z][a-z0-9-]{0,22}[a-z0-9]$", var.service_name))
    error_message = "service_name must be 2-24 characters: lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "image" {
  description = "Container image of the worker, e.g. europe-west1-docker.pkg.dev/PROJECT/REPO/pushworker:TAG (built from the repository's Dockerfile)."
  type        = string
}

variable "push_audience" {
  description = "Audience of the OIDC tokens that Pub/Sub push and Cloud Scheduler send, and that the worker accepts (GOOGLE_AUDIENCES). null: \"pushworker-<service_name>\"."
  type        = string
  default     = null
}

variable "clerk_publishable_key" {
  description = "Clerk publishable key (pk_test_... / pk_live_...). Empty: manual triggers from Clerk users are disabled."
  type        = string
  default     = ""
}

variable "clerk_authorized_parties" {
  description = "Origins of the admin pages allowed to send Clerk tokens (the tokens' azp), e.g. [\"https://admin.example.com\"]. Required when clerk_publishable_key is set."
  type        = list(string)
  default     = []
}

variable "trigger_permission" {
  description = "Clerk organization permission that allows triggering jobs by hand."
  type        = string
  default     = "org:jobs:trigger"
}

variable "job_timeout_secs" {
  description = "Longest a job may run before the worker cancels it and answers 504 (a nack). Must stay below ack_deadline_seconds."
  type        = number
  default     = 50

  validation {
    condition     = var.job_timeout_secs >= 1 && var.job_timeout_secs <= 3540
    error_message = "job_timeout_secs must be between 1 and 3540 (Cloud Run's request timeout is at most 3600 s)."
  }
}

variable "ack_deadline_seconds" {
  description = "Ack deadline of the push subscription, which is also the HTTP timeout of each push request."
  type        = number
  default     = 60

  validation {
    condition     = var.ack_deadline_seconds >= 10 && var.ack_deadline_seconds <= 600
    error_message = "ack_deadline_seconds must be between 10 and 600."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message before Pub/Sub moves it to the dead-letter topic."
  type        = number
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "retry_minimum_backoff" {
  description = "Shortest wait before a nacked message is delivered again."
  type        = string
  default     = "10s"
}

variable "retry_maximum_backoff" {
  description = "Longest wait before a nacked message is delivered again."
  type        = string
  default     = "600s"
}

variable "database_url_secret" {
  description = "Secret Manager secret id (short name or projects/P/secrets/S) holding DATABASE_URL; its latest version is mounted. null: no database."
  type        = string
  default     = null
}

variable "min_instances" {
  description = "Least number of instances kept warm (0 scales to zero)."
  type        = number
  default     = 0
}

variable "max_instances" {
  description = "Most instances Cloud Run may start."
  type        = number
  default     = 10
}

variable "scheduler_cron" {
  description = "Schedule of the example Cloud Scheduler job (unix-cron)."
  type        = string
  default     = "*/15 * * * *"
}

variable "scheduler_time_zone" {
  description = "Time zone of scheduler_cron."
  type        = string
  default     = "Etc/UTC"
}

variable "eventarc_enabled" {
  description = "Create an Eventarc trigger that sends eventarc_bucket's object finalize events to the service's /events path (run by the job EVENT_ROUTES names; by default storage-object)."
  type        = bool
  default     = false
}

variable "eventarc_bucket" {
  description = "Cloud Storage bucket whose finalize events the Eventarc trigger sends (with eventarc_enabled)."
  type        = string
  default     = ""
}

variable "eventarc_location" {
  description = "Location of the Eventarc trigger: the bucket's location (a region, or a multi-region such as us). null: var.region."
  type        = string
  default     = null
}

variable "metrics_sidecar_enabled" {
  description = "Run Google Cloud Managed Service for Prometheus's sidecar beside the worker: it scrapes the worker's /metrics on localhost (METRICS_ADDR) and writes them to Cloud Monitoring. Off: the worker records no metrics (METRICS_ADDR=off)."
  type        = bool
  default     = false
}

variable "metrics_scrape_interval" {
  description = "How often the sidecar scrapes /metrics (with metrics_sidecar_enabled)."
  type        = string
  default     = "30s"
}
