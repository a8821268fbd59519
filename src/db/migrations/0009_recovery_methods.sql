ALTER TABLE `recoveries` ADD `method` text DEFAULT 'auto' NOT NULL;--> statement-breakpoint
ALTER TABLE `recoveries` ADD `also` text DEFAULT '[]' NOT NULL;--> statement-breakpoint
ALTER TABLE `recoveries` ADD `verify` text DEFAULT 'moved' NOT NULL;--> statement-breakpoint
ALTER TABLE `recoveries` ADD `method_reason` text;