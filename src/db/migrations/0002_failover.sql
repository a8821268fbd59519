CREATE TABLE `audit_log` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`time` integer NOT NULL,
	`subject` text NOT NULL,
	`kind` text NOT NULL,
	`from_state` text,
	`to_state` text,
	`cause` text NOT NULL,
	`detail` text NOT NULL
);
--> statement-breakpoint
CREATE TABLE `fences` (
	`agent` text PRIMARY KEY NOT NULL,
	`reason` text NOT NULL,
	`since` integer NOT NULL
);
--> statement-breakpoint
CREATE TABLE `services` (
	`name` text PRIMARY KEY NOT NULL,
	`state` text NOT NULL,
	`site` text,
	`rule` text,
	`updated_at` integer NOT NULL
);
