CREATE TABLE `cursor_volumes` (
	`cursor` text NOT NULL,
	`volume_id` integer NOT NULL,
	`acked_seq` integer NOT NULL,
	`state` text NOT NULL,
	`updated_at` integer NOT NULL,
	PRIMARY KEY(`cursor`, `volume_id`)
);
--> statement-breakpoint
CREATE TABLE `cursors` (
	`name` text PRIMARY KEY NOT NULL,
	`pos` integer NOT NULL,
	`updated_at` integer NOT NULL
);
--> statement-breakpoint
ALTER TABLE `volumes` ADD `state` text DEFAULT 'empty' NOT NULL;