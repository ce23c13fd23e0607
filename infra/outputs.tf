output "service_url" {
  description = "HTTPS URL of the Cloud Run service."
  value       = google_cloud_run_v2_service.pushworker.uri
}

output "topic" {
  description = "Topic whose messages are pushed to the worker (publish with attribute job=<name>)."
  value       = google_pubsub_topic.jobs.id
}

output "dead_letter_topic" {
  description = "Topic that receives messages after max_delivery_attempts failed deliveries."
  value       = google_pubsub_topic.dead_letter.id
}

output "dead_letter_subscription" {
  description = "Pull subscription that keeps the dead letters (inspect with gcloud pubsub subscriptions pull)."
  value       = google_pubsub_subscription.dead_letter.id
}

output "push_subscription" {
  description = "Push subscription delivering the topic to /pubsub/push."
  value       = google_pubsub_subscription.push.id
}

output "push_service_account" {
  description = "Service account in the push OIDC tokens (one of GOOGLE_SERVICE_ACCOUNTS)."
  value       = google_service_account.push.email
}

output "push_audience" {
  description = "Audience of the push and scheduler OIDC tokens (GOOGLE_AUDIENCES)."
  value       = local.push_audience
}

output "eventarc_service_account" {
  description = "Service account in the Eventarc trigger's OIDC tokens (one of GOOGLE_SERVICE_ACCOUNTS; holds only run.invoker)."
  value       = google_service_account.eventarc.email
}

output "eventarc_trigger" {
  description = "The Eventarc trigger sending eventarc_bucket's finalize events to /events, or null when eventarc_enabled is false."
  value       = one(google_eventarc_trigger.storage_finalized[*].id)
}
